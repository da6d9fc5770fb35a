"""The Synapse module facade (see `synapse_fedhealth.FedHealthModule`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attr
from synapse.logging.context import PreserveLoggingContext
from synapse.module_api.errors import ConfigError
from twisted.internet import defer
from twisted.python.threadpool import ThreadPool

from synapse_fedhealth import homeserver
from synapse_fedhealth.checks.forwarded import ECHO_PATH
from synapse_fedhealth.checks.insider import INSIDER_CHECK_IDS
from synapse_fedhealth.config import (
    FedHealthConfig,
    FedHealthConfigError,
    parse_fedhealth_config,
)
from synapse_fedhealth.echo import EchoResource, NonceBook, secret_from_signing_key
from synapse_fedhealth.families import NETWORK_CHECK_IDS, NetworkFamily
from synapse_fedhealth.insider_family import (
    NOTARY_CHECK_IDS,
    TARGET_CHECK_IDS,
    InsiderSettings,
    NotaryFamily,
    OutsideViewFamily,
    TargetInsiderFamily,
    make_http,
)
from synapse_fedhealth.metrics import record_report
from synapse_fedhealth.monitor import TransitionLogger, log_config_problems
from synapse_fedhealth.net.dns import DnsResolver, ThreadedDnsResolver
from synapse_fedhealth.net.dns_cache import RunScopedDnsCache
from synapse_fedhealth.net.http import ProbeHttpClient
from synapse_fedhealth.net.tls import TrustStore
from synapse_fedhealth.report import CheckResult, Report, fail
from synapse_fedhealth.resource import FedHealthResource
from synapse_fedhealth.runner import (
    CheckFamily,
    CheckRunner,
    ReportCache,
    SkippedFamily,
    skipped_family_results,
)

if TYPE_CHECKING:
    from synapse.module_api import ModuleApi

    from synapse_fedhealth.network import NetworkSettings

logger = logging.getLogger("synapse_fedhealth")

ENDPOINT_PATH = "/_synapse/fedhealth"
DNS_THREADS = 4  # DNS lookups are few and short; bounded so they can't pile up


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class RunIO:
    """The I/O objects the families of one run share."""

    resolver: DnsResolver
    trust: TrustStore | None
    http: ProbeHttpClient


class FedHealthModule:
    """Checks federation health from inside Synapse.

    Configure it under `modules:` in homeserver.yaml (see docs/configuration.md).
    """

    def __init__(self, config: FedHealthConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        self._reactor = homeserver.reactor_of(api)
        self._runs_network = api.should_run_background_tasks()
        self._threadpool = ThreadPool(
            minthreads=0, maxthreads=DNS_THREADS, name="synapse_fedhealth-dns"
        )
        self._snapshot_error: str | None = None
        # Which of our listeners the public path reaches, once a run showed it.
        self._public_listener_index: int | None = None
        self._trust: TrustStore | None = None
        try:
            self._snapshot: homeserver.HomeserverSnapshot | None = (
                homeserver.snapshot_of(api)
            )
        except Exception as e:
            # A Synapse release that moved its config objects must not stop
            # the homeserver: report the problem instead of checks.
            self._snapshot = None
            self._snapshot_error = f"{type(e).__name__}: {e}"
            logger.warning(
                "synapse_fedhealth could not read Synapse's configuration (%s); "
                "the report will say so",
                self._snapshot_error,
            )
        self._transitions = TransitionLogger()
        self._cache = ReportCache(
            self._reactor, config.cache_ttl_ms / 1000, self._start_run
        )
        self._cache.add_listener(self._on_report)

        api.register_web_resource(
            ENDPOINT_PATH, FedHealthResource(api, self._get_report)
        )
        # The echo resource answers our own proxy.forwarded_headers probe when
        # it arrives through the public path. Every process mounts it; the
        # nonce secret comes from the signing key, which all processes share.
        self._nonces = NonceBook(secret=self._nonce_secret())
        api.register_web_resource(ECHO_PATH, EchoResource(self._nonces))

        # Config problems are known now: log them before any network traffic.
        try:
            log_config_problems(list(self._static_checks()))
        except Exception as e:  # never let a check stop the homeserver
            logger.warning("synapse_fedhealth: the config checks failed: %s", e)

        if self._runs_network:
            self._reactor.callWhenRunning(self._threadpool.start)
            self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._threadpool.stop
            )
            if config.startup_check:
                api.delayed_background_call(
                    config.startup_delay_ms,
                    self._background_run,
                    desc="fedhealth_startup",
                )
            if config.interval_ms:
                api.looping_background_call(
                    self._background_run, config.interval_ms, desc="fedhealth_periodic"
                )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> FedHealthConfig:
        try:
            return parse_fedhealth_config(config)
        except FedHealthConfigError as e:
            raise ConfigError(e.message, path=(e.key,)) from None

    # -- runs -----------------------------------------------------------------

    def _static_checks(self) -> Sequence[CheckResult]:
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
        from synapse_fedhealth.checks.config_lint import LintSettings, lint_config

        results: Sequence[CheckResult] = lint_config(
            self._snapshot,
            LintSettings(
                cert_expiry_warning_days=self._config.cert_expiry_warning_days,
                tls_ca_file=self._config.tls_ca_file,
                now=self._reactor.seconds(),
                public_listener_index=self._public_listener_index,
            ),
        )
        return results

    def _nonce_secret(self) -> bytes | None:
        if self._snapshot is None or not self._snapshot.signing_keys:
            return None
        key = self._snapshot.signing_keys[0].signing_key
        try:
            return secret_from_signing_key(bytes(key.encode()))
        except Exception:
            return None

    def _families(self, run_io: RunIO | None = None) -> Sequence[CheckFamily]:
        if self._network_skip_reason() or run_io is None:
            return []
        assert self._snapshot is not None
        return [
            NetworkFamily(
                self._reactor,
                self._network_settings(),
                self._threadpool,
                resolver=run_io.resolver,
                http=run_io.http,
                trust=run_io.trust,
            ),
            OutsideViewFamily(
                self._reactor,
                self._snapshot,
                self._insider_settings(self._config.timeout_s),
                run_io.http,
                issue_nonce=self._nonces.issue,
            ),
        ]

    def _insider_settings(self, timeout_s: float) -> InsiderSettings:
        network = self._network_settings()
        return InsiderSettings(
            timeout_s=timeout_s,
            notary_check=self._config.notary_check,
            ca_files=network.ca_files,
            dns_servers=network.dns_servers,
            user_agent=network.user_agent,
            cert_expiry_warning_days=self._config.cert_expiry_warning_days,
        )

    def _follow_ups(
        self,
        facts: Mapping[str, Any],
        remaining_s: float,
        run_io: RunIO | None = None,
    ) -> Sequence[CheckFamily]:
        findings = facts.get("network")
        if self._snapshot is None or self._network_skip_reason() or run_io is None:
            # The static part already reports these ids as `skip` with why.
            return []
        if findings is None:
            return [
                SkippedFamily(
                    "insider (targets)",
                    TARGET_CHECK_IDS + NOTARY_CHECK_IDS,
                    "not run: the network checks did not finish (see their results)",
                )
            ]
        return [
            TargetInsiderFamily(
                self._reactor, self._snapshot, findings, run_io.http, remaining_s
            ),
            NotaryFamily(
                self._reactor,
                self._snapshot,
                self._insider_settings(remaining_s),
                self._threadpool,
                findings,
                run_io.http,
                resolver=run_io.resolver,
                trust=run_io.trust,
            ),
        ]

    def _network_skip_reason(self) -> str | None:
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

    def _run_io(self) -> RunIO:
        """What the families of one run share: one DNS cache (the same
        question gets the same answer), one HTTP client, and the trust store,
        which is read once and not on every run."""
        resolver = RunScopedDnsCache(
            ThreadedDnsResolver(
                self._reactor, self._threadpool, self._config.dns_servers
            )
        )
        trust = self._trust_store()
        http = make_http(
            self._reactor,
            self._insider_settings(self._config.timeout_s),
            self._threadpool,
            resolver,
            trust,
        )
        return RunIO(resolver=resolver, trust=trust, http=http)

    def _trust_store(self) -> TrustStore | None:
        """Built on first use. None when a CA file can't be read: then the
        network checks build their own and report the problem."""
        if self._trust is None:
            try:
                self._trust = TrustStore(self._network_settings().ca_files)
            except (OSError, ValueError):
                return None
        return self._trust

    def _network_settings(self) -> NetworkSettings:
        from synapse_fedhealth.network import NetworkSettings

        assert self._snapshot is not None
        ca_files: tuple[str, ...] = ()
        if self._config.tls_ca_file:
            ca_files = (self._config.tls_ca_file,)
        elif self._snapshot.federation_custom_ca_list:
            ca_files = self._snapshot.federation_custom_ca_list
        settings = NetworkSettings(
            server_name=self._snapshot.server_name,
            timeout_s=self._config.timeout_s,
            cert_expiry_warning_days=self._config.cert_expiry_warning_days,
            ca_files=ca_files,
            dns_servers=self._config.dns_servers,
            user_agent=homeserver.user_agent_of(self._api),
        )
        return settings

    def _make_runner(self) -> CheckRunner:
        skip_reason = self._network_skip_reason()
        run_io = None if skip_reason else self._run_io()

        def static() -> Sequence[CheckResult]:
            checks = list(self._static_checks())
            if skip_reason:
                checks.extend(
                    skipped_family_results(
                        NETWORK_CHECK_IDS + INSIDER_CHECK_IDS, skip_reason
                    )
                )
            return checks

        return CheckRunner(
            reactor=self._reactor,
            server_name=self._api.server_name,
            timeout_s=self._config.timeout_s,
            static_checks=static,
            families=lambda: self._families(run_io),
            follow_ups=lambda facts, remaining_s: self._follow_ups(
                facts, remaining_s, run_io
            ),
            federation_disabled=bool(
                self._snapshot is not None and self._snapshot.federation_disabled
            ),
        )

    def _start_run(self) -> defer.Deferred[Report]:
        # The run is shared by every waiter, so it must not carry any one
        # request's logcontext: start it in the sentinel context. Waiters
        # follow the rules with make_deferred_yieldable.
        with PreserveLoggingContext():
            return defer.ensureDeferred(self._make_runner().run())

    def _get_report(self, refresh: bool) -> defer.Deferred[Report]:
        return self._cache.get(refresh=refresh)

    async def _background_run(self) -> None:
        from synapse.logging.context import make_deferred_yieldable

        try:
            await make_deferred_yieldable(self._cache.get(refresh=True))
        except Exception as e:
            # The runner contains check errors; this is a last line of defence
            # so a background run never puts a traceback in Synapse's log.
            logger.warning("synapse_fedhealth: the background run failed: %s", e)

    def _on_report(self, report: Report) -> None:
        record_report(report, cert_expiry_from(report))
        self._public_listener_index = public_listener_index_from(
            report, self._public_listener_index
        )
        self._transitions.observe(report)


def cert_expiry_from(report: Report) -> dict[str, float]:
    """Host -> notAfter (unix time) from the tls.certificate details."""
    expiry: dict[str, float] = {}
    for check in report.checks:
        if check.id != "tls.certificate":
            continue
        not_after = check.details.get("not_after")
        host = check.details.get("sni") or check.target
        if isinstance(not_after, (int, float)) and isinstance(host, str):
            expiry[host] = float(not_after)
    return expiry


def public_listener_index_from(report: Report, previous: int | None) -> int | None:
    """The listener the echo request reached through the public path."""
    for check in report.checks:
        if check.id == "proxy.forwarded_headers":
            index = check.details.get("listener_index")
            if isinstance(index, int):
                return index
    return previous
