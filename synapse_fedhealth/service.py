"""What the module does, given its environment: the service behind the
`FedHealthModule` facade.

It holds the config, the Synapse snapshot, the process-wide I/O and a
`FamilyFactory`, and produces reports: config checks, a runner per run, the
single-flight cache, and what each new report feeds (metrics, transition
logging, the public-listener memory of `config.x_forwarded`). Tests build it
directly with fakes; the facade builds it from Synapse's `ModuleApi`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from twisted.internet import defer

from synapse_fedhealth import check_ids
from synapse_fedhealth.checks.config_lint import LintSettings, lint_config
from synapse_fedhealth.config import FedHealthConfig
from synapse_fedhealth.engine.deadline import Clock
from synapse_fedhealth.families import FamilyFactory
from synapse_fedhealth.homeserver import HomeserverSnapshot
from synapse_fedhealth.metrics import record_report
from synapse_fedhealth.monitor import TransitionLogger
from synapse_fedhealth.report import CheckResult, Report, fail
from synapse_fedhealth.runner import CheckRunner, ReportCache, skipped_family_results
from synapse_fedhealth.settings import RunSettings, trust_files
from synapse_fedhealth.wiring import RunIO

logger = logging.getLogger("synapse_fedhealth")

NETWORK_RUN_CHECK_IDS = check_ids.ids_of(*check_ids.NETWORK_RUN_FAMILIES)


class FedHealthService:
    """`snapshot` is None when Synapse's config could not be read
    (`snapshot_error` says why): then the report says so instead of
    checking. `run_io` gives the I/O of one run; `start_run` starts a run's
    coroutine (the facade starts it in its own logcontext)."""

    def __init__(
        self,
        *,
        config: FedHealthConfig,
        server_name: str,
        snapshot: HomeserverSnapshot | None,
        snapshot_error: str = "",
        clock: Clock,
        run_io: Callable[[RunSettings], RunIO],
        families: FamilyFactory,
        runs_network: bool,
        user_agent: str,
        start_run: Callable[
            [Callable[[], Coroutine[Any, Any, Report]]], defer.Deferred[Report]
        ]
        | None = None,
    ) -> None:
        self._config = config
        self._server_name = server_name
        self._snapshot = snapshot
        self._snapshot_error = snapshot_error
        self._clock = clock
        self._run_io = run_io
        self._families = families
        self._runs_network = runs_network
        self._user_agent = user_agent
        self._start = start_run or (lambda run: defer.ensureDeferred(run()))
        # Which of our listeners the public path reaches, once a run showed it.
        self._public_listener_index: int | None = None
        self._transitions = TransitionLogger()
        self.cache = ReportCache(clock, config.cache_ttl_ms / 1000, self._start_run)
        self.cache.add_listener(self._on_report)

    # -- what the facade and the resource call -----------------------------------

    def get_report(self, refresh: bool = False) -> defer.Deferred[Report]:
        return self.cache.get(refresh=refresh)

    def config_checks(self) -> Sequence[CheckResult]:
        if self._snapshot is None:
            return [
                fail(
                    "config",
                    f"could not read Synapse's configuration: {self._snapshot_error}",
                    fix="Upgrade synapse-fedhealth to a release that supports this "
                    "Synapse version.",
                    details={"reason": "error"},
                )
            ]
        return lint_config(
            self._snapshot,
            LintSettings(
                cert_expiry_warning_days=self._config.cert_expiry_warning_days,
                tls_ca_file=self._config.tls_ca_file,
                now=self._clock.seconds(),
                public_listener_index=self._public_listener_index,
            ),
        )

    def network_skip_reason(self) -> str | None:
        if self._snapshot is None:
            return "Synapse's configuration could not be read"
        if self._snapshot.federation_disabled:
            return "federation is disabled by config (federation_domain_whitelist: [])"
        if not self._runs_network:
            return (
                "network checks run only on the instance that runs background "
                "tasks; ask that instance for the full report"
            )
        return None

    def settings(self) -> RunSettings:
        assert self._snapshot is not None
        return RunSettings(
            server_name=self._snapshot.server_name,
            timeout_s=self._config.timeout_s,
            cert_expiry_warning_days=self._config.cert_expiry_warning_days,
            ca_files=trust_files(
                self._config.tls_ca_file,
                self._snapshot.federation_custom_ca_list or (),
            ),
            dns_servers=self._config.dns_servers,
            user_agent=self._user_agent,
            notary_check=self._config.notary_check,
            ip_ranges=self._snapshot.federation_ip_ranges,
        )

    # -- one run -----------------------------------------------------------------

    def make_runner(self) -> CheckRunner:
        skip_reason = self.network_skip_reason()

        def static() -> Sequence[CheckResult]:
            checks = list(self.config_checks())
            if skip_reason:
                checks.extend(
                    skipped_family_results(NETWORK_RUN_CHECK_IDS, skip_reason)
                )
            return checks

        server_name = self._server_name
        if skip_reason:
            return CheckRunner(
                reactor=self._clock,
                server_name=server_name,
                timeout_s=self._config.timeout_s,
                static_checks=static,
                families=list,
                federation_disabled=self.federation_disabled,
            )
        settings = self.settings()
        io = self._run_io(settings)
        return CheckRunner(
            reactor=self._clock,
            server_name=server_name,
            timeout_s=settings.timeout_s,
            static_checks=static,
            families=lambda: self._families.first(io, settings),
            follow_ups=lambda network: self._families.follow_ups(io, settings, network),
            federation_disabled=self.federation_disabled,
            connections=io.targets,
        )

    @property
    def federation_disabled(self) -> bool:
        return self._snapshot is not None and self._snapshot.federation_disabled

    @property
    def runs_network(self) -> bool:
        return self._runs_network

    @property
    def server_name(self) -> str:
        return self._server_name

    @property
    def timeout_s(self) -> float:
        return self._config.timeout_s

    def _start_run(self) -> defer.Deferred[Report]:
        return self._start(lambda: self.make_runner().run())

    def _on_report(self, report: Report) -> None:
        record_report(report, report.facts.cert_expiry)
        if report.facts.public_listener_index is not None:
            self._public_listener_index = report.facts.public_listener_index
        self._transitions.observe(report)
