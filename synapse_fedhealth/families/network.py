"""The network family: the server as remote servers see it (SPEC 4.2-4.4)."""

from __future__ import annotations

from collections.abc import Sequence

from synapse_fedhealth.check_ids import Family, ids_of
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.network_checker import NetworkChecker
from synapse_fedhealth.report import CheckResult, skip
from synapse_fedhealth.runner import FamilyOutcome
from synapse_fedhealth.settings import RunSettings
from synapse_fedhealth.wiring import RunIO

NETWORK_CHECK_IDS = ids_of(Family.NETWORK)


class NetworkFamily:
    name = Family.NETWORK.value
    check_ids: Sequence[str] = NETWORK_CHECK_IDS

    def __init__(self, io: RunIO, settings: RunSettings) -> None:
        self._checker = NetworkChecker(io, settings)

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        findings = await self._checker.check(deadline)
        return FamilyOutcome(
            checks=with_skips_for_missing(findings.checks, NETWORK_CHECK_IDS),
            federation_tester=findings.federation_tester,
            network=findings,
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
