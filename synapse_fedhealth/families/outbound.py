"""The families of SPEC 4.6 and MSC1929:

- `OutboundFamily`: `outbound.reach` (Synapse's own federation client, to
  each of `outbound_probe_servers`, asked at most once a minute) and
  `outbound.destinations` (Synapse's record of sending);
- `TrafficFamily` (a follow-up: it cross-checks the inbound findings):
  `federation.traffic`;
- `SupportWellKnownFamily`: `client.support_well_known`, which the `check`
  command runs too.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer

from synapse_fedhealth.check_ids import Family, ids_of
from synapse_fedhealth.checks.outbound import (
    KEYS_PATH,
    OUTBOUND_DESTINATIONS,
    OUTBOUND_REACH,
    VERSION_PATH,
    OutboundProbe,
    judge_destinations,
    judge_outbound_reach,
)
from synapse_fedhealth.checks.support_wellknown import (
    SUPPORT_WELL_KNOWN_PATH,
    judge_support_well_known,
    judge_support_well_known_error,
)
from synapse_fedhealth.checks.traffic import FEDERATION_TRAFFIC, judge_traffic
from synapse_fedhealth.engine.deadline import BoundFailure, Deadline
from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.engine.outbound import (
    OUTBOUND_PROBE_MARGIN_S,
    OutboundEnvironment,
)
from synapse_fedhealth.engine.resolution import bounded_get
from synapse_fedhealth.engine.spawn import spawn
from synapse_fedhealth.families.outside import MAX_BODY, error_kind
from synapse_fedhealth.report import CheckResult, Status, fail, skip
from synapse_fedhealth.runner import FamilyOutcome
from synapse_fedhealth.wiring import RunIO

PROBE_PATHS = (VERSION_PATH, KEYS_PATH)


class OutboundFamily:
    name = Family.OUTBOUND.value
    check_ids: Sequence[str] = ids_of(Family.OUTBOUND)

    def __init__(self, env: OutboundEnvironment | None) -> None:
        self._env = env

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        env = self._env
        if env is None:
            return FamilyOutcome(
                checks=tuple(
                    skip(i, "skipped: Synapse's federation client is not available")
                    for i in self.check_ids
                )
            )
        results: list[CheckResult] = await defer.gatherResults(
            [
                spawn(self._reach(env, deadline)),
                spawn(self._destinations(env, deadline)),
            ],
            consumeErrors=True,
        )
        return FamilyOutcome(checks=tuple(results))

    async def _reach(self, env: OutboundEnvironment, deadline: Deadline) -> CheckResult:
        client = env.client
        if client is None:
            return skip(
                OUTBOUND_REACH, "skipped: Synapse's federation agent is not available"
            )
        if not env.probe_servers:
            return judge_outbound_reach([], source=env.source)

        probe_deadline = deadline.earlier(OUTBOUND_PROBE_MARGIN_S)

        async def one(name: str) -> tuple[OutboundProbe, int]:
            answer = await env.answers.ask(
                ("outbound.reach", name),
                lambda: client.probe(name, PROBE_PATHS, probe_deadline.remaining_s()),
            )
            return answer.value, answer.age_ms

        probes: list[tuple[OutboundProbe, int]] = await defer.gatherResults(
            [spawn(one(n)) for n in env.probe_servers],
            consumeErrors=True,
        )
        return judge_outbound_reach(probes, source=env.source)

    async def _destinations(
        self, env: OutboundEnvironment, deadline: Deadline
    ) -> CheckResult:
        reader = env.destinations
        if reader is None:
            return skip(
                OUTBOUND_DESTINATIONS, "skipped: Synapse's database is not available"
            )

        def failed(error: BoundFailure) -> CheckResult:
            return fail(
                OUTBOUND_DESTINATIONS,
                f"reading Synapse's destinations table failed: {error}",
                fix="The database is slow or unreachable; see Synapse's log.",
                details={"reason": error.kind},
            )

        async def read() -> CheckResult:
            record = await reader.read()
            return judge_destinations(
                record, now_ms=int(deadline.clock.seconds() * 1000)
            )

        return await deadline.bound(read, failed, what="destinations query")


def inbound_broken(network: NetworkFindings | None) -> bool:
    return network is None or any(c.status is Status.FAIL for c in network.checks)


class TrafficFamily:
    name = Family.TRAFFIC.value
    check_ids: Sequence[str] = ids_of(Family.TRAFFIC)

    def __init__(
        self, env: OutboundEnvironment | None, network: NetworkFindings | None
    ) -> None:
        self._env = env
        self._network = network

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        source = self._env.traffic if self._env is not None else None
        if source is None:
            result = skip(
                FEDERATION_TRAFFIC, "skipped: no traffic recorder in this process"
            )
        else:
            result = judge_traffic(
                source.record(),
                now_ms=int(deadline.clock.seconds() * 1000),
                inbound_broken=inbound_broken(self._network),
            )
        return FamilyOutcome(checks=(result,))


class SupportWellKnownFamily:
    name = Family.SUPPORT.value
    check_ids: Sequence[str] = ids_of(Family.SUPPORT)

    def __init__(self, io: RunIO, server_name: str) -> None:
        self._http = io.http
        self._server_name = server_name

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        name = self._server_name
        result = await bounded_get(
            self._http,
            f"https://{name}{SUPPORT_WELL_KNOWN_PATH}",
            deadline,
            max_bytes=MAX_BODY,
            follow_redirects=True,
        )
        request = result.request_details()
        if result.status is None:
            check = judge_support_well_known_error(
                error_kind(result),
                result.error_message,
                server_name=name,
                request=request,
            )
        else:
            check = judge_support_well_known(
                result.status,
                result.headers,
                result.body,
                server_name=name,
                request=request,
            )
        return FamilyOutcome(checks=(check,))
