"""Adapters from the check engines to the runner's `CheckFamily` shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.python.threadpool import ThreadPool

from synapse_fedhealth.runner import FamilyOutcome

# The ids the network engine reports; used for placeholders when the whole
# family times out or fails, and for `skip` results where it does not run.
NETWORK_CHECK_IDS: tuple[str, ...] = (
    "discovery.well_known",
    "discovery.well_known_consistency",
    "discovery.srv",
    "discovery.addresses",
    "discovery.targets",
    "connection.reachable",
    "tls.handshake",
    "tls.certificate",
    "federation.version",
    "federation.keys",
)


class NetworkFamily:
    """All probes of the server as remote servers see it (SPEC 4.2-4.4)."""

    name = "network"
    check_ids: Sequence[str] = NETWORK_CHECK_IDS

    def __init__(self, reactor: Any, settings: Any, threadpool: ThreadPool) -> None:
        self._reactor = reactor
        self._settings = settings
        self._threadpool = threadpool

    async def run(self) -> FamilyOutcome:
        from synapse_fedhealth.network import NetworkChecker

        checker = NetworkChecker(self._reactor, self._settings, self._threadpool)
        findings = await checker.run()
        return FamilyOutcome(
            checks=tuple(findings.checks),
            federation_tester=dict(findings.federation_tester),
            facts={"network": findings},
        )
