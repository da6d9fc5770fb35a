"""The Synapse module facade (see `synapse_fedhealth.FedHealthModule`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from synapse.logging.context import PreserveLoggingContext, make_deferred_yieldable
from synapse.module_api.errors import ConfigError
from twisted.internet import defer, task

from synapse_fedhealth import homeserver
from synapse_fedhealth.checks.forwarded import ECHO_PATH
from synapse_fedhealth.config import (
    FedHealthConfig,
    FedHealthConfigError,
    parse_fedhealth_config,
)
from synapse_fedhealth.deployment import (
    MAIN_INSTANCE,
    REFRESH_POLL_MS,
    DeploymentStore,
    SharedReports,
)
from synapse_fedhealth.echo import EchoResource, NonceBook, secret_from_signing_key
from synapse_fedhealth.families import DefaultFamilies, FamilyFactory
from synapse_fedhealth.monitor import log_config_problems
from synapse_fedhealth.report import Report
from synapse_fedhealth.resource import FedHealthResource
from synapse_fedhealth.service import FedHealthService
from synapse_fedhealth.wiring import ProcessIO

if TYPE_CHECKING:
    from synapse.module_api import ModuleApi

logger = logging.getLogger("synapse_fedhealth")

ENDPOINT_PATH = "/_synapse/fedhealth"


class FedHealthModule:
    """Checks federation health from inside Synapse.

    Configure it under `modules:` in homeserver.yaml (see docs/configuration.md).
    """

    def __init__(self, config: FedHealthConfig, api: ModuleApi) -> None:
        self._api = api
        reactor = homeserver.reactor_of(api)
        runs_network = api.should_run_background_tasks()
        snapshot: homeserver.HomeserverSnapshot | None = None
        snapshot_error = ""
        try:
            snapshot = homeserver.snapshot_of(api)
        except Exception as e:
            # A Synapse release that moved its config objects must not stop
            # the homeserver: report the problem instead of checks.
            snapshot_error = f"{type(e).__name__}: {e}"
            logger.warning(
                "synapse_fedhealth could not read Synapse's configuration (%s); "
                "the report will say so",
                snapshot_error,
            )
        # The echo resource answers our own proxy.forwarded_headers probe when
        # it arrives through the public path. Every process mounts it; the
        # nonce secret comes from the signing key, which all processes share.
        self._nonces = NonceBook(secret=_nonce_secret(snapshot))
        self._io = ProcessIO(reactor)
        self.service = FedHealthService(
            config=config,
            server_name=api.server_name,
            snapshot=snapshot,
            snapshot_error=snapshot_error,
            clock=reactor,
            run_io=self._io.for_run,
            families=self.families_for(snapshot),
            runs_network=runs_network,
            user_agent=homeserver.user_agent_of(api),
            start_run=_start_shared_run,
        )
        # Every process serves the deployment's report: the checking
        # process's latest run plus each process's config results, shared
        # through Synapse's own database (docs/workers.md).
        shared = homeserver.may_have_workers(api)
        self.shared = SharedReports(
            self.service,
            DeploymentStore(api.run_db_interaction) if shared else None,
            instance=api.worker_name or MAIN_INSTANCE,
            clock=reactor,
            wait=make_deferred_yieldable,
            sleep=lambda s: make_deferred_yieldable(
                task.deferLater(reactor, s, lambda: None)
            ),
            spawn=_background(api, "fedhealth_share"),
        )
        api.register_web_resource(
            ENDPOINT_PATH, FedHealthResource(api, self.shared.report)
        )
        api.register_web_resource(ECHO_PATH, EchoResource(self._nonces))

        # Config problems are known now: log them before any network traffic.
        try:
            log_config_problems(list(self.service.config_checks()))
        except Exception as e:  # never let a check stop the homeserver
            logger.warning("synapse_fedhealth: the config checks failed: %s", e)

        if shared:
            reactor.callWhenRunning(
                _background(api, "fedhealth_share"), self.shared.publish_config
            )
        if runs_network:
            reactor.addSystemEventTrigger("during", "shutdown", self._io.stop)
            if shared:
                # A refresh asked on another process arrives through the
                # shared table: one small read per second.
                api.looping_background_call(
                    self.shared.poll_refresh_requests,
                    REFRESH_POLL_MS,
                    desc="fedhealth_refresh_requests",
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

    def families_for(
        self, snapshot: homeserver.HomeserverSnapshot | None
    ) -> FamilyFactory:
        """The check families of each run. A subclass may add its own."""
        if snapshot is None:
            return _NoFamilies()
        return DefaultFamilies(snapshot, echo=self._nonces)

    async def _background_run(self) -> None:
        try:
            await self.shared.report(refresh=True)
        except Exception as e:
            # The runner contains check errors; this is a last line of defence
            # so a background run never puts a traceback in Synapse's log.
            logger.warning("synapse_fedhealth: the background run failed: %s", e)


def _start_shared_run(
    run: Callable[[], defer.Deferred[Report]],
) -> defer.Deferred[Report]:
    # The run is shared by every waiter, so it must not carry any one
    # request's logcontext: start it in the sentinel context. Waiters
    # follow the rules with make_deferred_yieldable.
    with PreserveLoggingContext():
        return run()


def _background(
    api: ModuleApi, desc: str
) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """Runs a function as a named Synapse background process (its own
    logcontext and resource metrics), fire and forget."""
    run: Callable[..., Any] | None = getattr(api, "run_as_background_process", None)
    if run is None:  # Synapse before 1.136
        from synapse.module_api import run_as_background_process

        run = run_as_background_process

    def spawn(func: Callable[[], Awaitable[None]]) -> None:
        assert run is not None
        run(desc, func)

    return spawn


def _nonce_secret(snapshot: homeserver.HomeserverSnapshot | None) -> bytes | None:
    if snapshot is None or not snapshot.signing_keys:
        return None
    key = snapshot.signing_keys[0].signing_key
    try:
        return secret_from_signing_key(bytes(key.encode()))
    except Exception:
        return None


class _NoFamilies:
    """Without a snapshot nothing is probed: the report says why."""

    def first(self, io: Any, settings: Any) -> list[Any]:
        return []

    def follow_ups(self, io: Any, settings: Any, network: Any) -> list[Any]:
        return []
