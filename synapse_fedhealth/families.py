"""Adapters from the check engines to the runner's `CheckFamily` shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.python.threadpool import ThreadPool

from synapse_fedhealth.report import CheckResult, skip
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

    def __init__(
        self,
        reactor: Any,
        settings: Any,
        threadpool: ThreadPool,
        *,
        resolver: Any = None,
        http: Any = None,
        trust: Any = None,
    ) -> None:
        self._reactor = reactor
        self.settings = settings
        self._threadpool = threadpool
        # Shared with the other families of the run (one DNS cache, one
        # client, one trust store); built by the checker when not given.
        self._resolver = resolver
        self._http = http
        self._trust = trust

    async def run(self) -> FamilyOutcome:
        from synapse_fedhealth.network import NetworkChecker

        checker = NetworkChecker(
            self._reactor,
            self.settings,
            self._threadpool,
            resolver=self._resolver,
            http=self._http,
            trust=self._trust,
        )
        findings = await checker.run()
        return FamilyOutcome(
            checks=with_skips_for_missing(findings.checks, NETWORK_CHECK_IDS),
            federation_tester=dict(findings.federation_tester),
            facts={"network": findings},
        )


def with_skips_for_missing(
    checks: Sequence[CheckResult], check_ids: Sequence[str]
) -> tuple[CheckResult, ...]:
    """Every id appears in the report: per-address checks that had no address
    to probe say so instead of silently vanishing."""
    present = {check.id for check in checks}
    missing = [
        skip(check_id, "not run: no target address to probe (see discovery.addresses)")
        for check_id in check_ids
        if check_id not in present
    ]
    return (*checks, *missing)
