"""The Synapse module facade (see `synapse_fedhealth.FedHealthModule`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from synapse.logging.context import PreserveLoggingContext, make_deferred_yieldable
from synapse.module_api.errors import ConfigError
from twisted.internet import defer

from synapse_fedhealth import homeserver
from synapse_fedhealth.checks.forwarded import ECHO_PATH
from synapse_fedhealth.config import (
    FedHealthConfig,
    FedHealthConfigError,
    parse_fedhealth_config,
)
from synapse_fedhealth.echo import EchoResource, NonceBook, secret_from_signing_key
from synapse_fedhealth.engine.outbound import ThirdPartyAnswers
from synapse_fedhealth.families import DefaultFamilies, FamilyFactory
from synapse_fedhealth.families.outbound import OutboundEnvironment, probe_servers_for
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
        self._outbound = (
            _outbound_environment(api, config, snapshot)
            if snapshot is not None and runs_network
            else None
        )
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
        api.register_web_resource(
            ENDPOINT_PATH, FedHealthResource(api, self.service.get_report)
        )
        api.register_web_resource(ECHO_PATH, EchoResource(self._nonces))

        # Config problems are known now: log them before any network traffic.
        try:
            log_config_problems(list(self.service.config_checks()))
        except Exception as e:  # never let a check stop the homeserver
            logger.warning("synapse_fedhealth: the config checks failed: %s", e)

        if runs_network:
            reactor.addSystemEventTrigger("during", "shutdown", self._io.stop)
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
        return DefaultFamilies(snapshot, echo=self._nonces, outbound=self._outbound)

    async def _background_run(self) -> None:
        try:
            await make_deferred_yieldable(self.service.get_report(refresh=True))
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


def _outbound_environment(
    api: ModuleApi, config: FedHealthConfig, snapshot: homeserver.HomeserverSnapshot
) -> OutboundEnvironment | None:
    """Synapse's own federation agent, database and traffic evidence for the
    outbound families; None (the checks then skip) if this Synapse can't
    give them."""
    servers, source = probe_servers_for(
        config.outbound_probe_servers,
        [k.server_name for k in snapshot.trusted_key_servers],
        snapshot.server_name,
    )
    client: homeserver.SynapseOutbound | None = None
    try:
        client = homeserver.SynapseOutbound(api)
    except Exception as e:
        # The report says so (outbound.reach skip); no start-up warning for it.
        logger.info(
            "synapse_fedhealth: Synapse's federation agent is not available "
            "(%s: %s); outbound.reach is skipped",
            type(e).__name__,
            e,
        )
    traffic = homeserver.FederationTrafficRecorder(api, snapshot.server_name)
    return OutboundEnvironment(
        client=client,
        destinations=client,
        traffic=traffic,
        probe_servers=servers,
        source=source,
        answers=ThirdPartyAnswers(homeserver.reactor_of(api).seconds),
    )


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
