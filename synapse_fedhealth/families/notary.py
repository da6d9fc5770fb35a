"""`federation.notary` (SPEC 4.4): do the trusted key servers hold the key
response this server serves now? Runs after the network family, which
fetched that response from our public addresses.

A notary is found as a Synapse peer finds it, with the same resolution, and
asked once: one discovery and one POST per notary, no probe of its
addresses. A notary is a third party: it is asked a given question at most
once a minute (`third_party.ThirdPartyAnswers`); a run inside that minute
reuses the last answer and says its age in `details.age_ms`.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence

import attr
from twisted.internet import defer

from synapse_fedhealth.check_ids import Family, ids_of
from synapse_fedhealth.checks.notary import (
    NOTARY_QUERY_PATH,
    build_notary_query,
    judge_notary_answer,
    judge_notary_blocked,
    judge_notary_error,
    notary_minimum_valid_until_ts,
    notary_reach,
    plan_notary_checks,
)
from synapse_fedhealth.engine.deadline import NOTARY_DISCOVERY_SHARE, Deadline
from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.engine.resolution import ServerNameResolver, bounded_get
from synapse_fedhealth.engine.spawn import spawn
from synapse_fedhealth.families.outside import MAX_BODY, error_kind
from synapse_fedhealth.homeserver import HomeserverSnapshot, TrustedKeyServerInfo
from synapse_fedhealth.report import CheckResult
from synapse_fedhealth.runner import FamilyOutcome
from synapse_fedhealth.third_party import ThirdPartyAnswers
from synapse_fedhealth.wiring import RunIO


class NotaryFamily:
    name = Family.NOTARY.value
    check_ids: Sequence[str] = ids_of(Family.NOTARY)

    def __init__(
        self,
        io: RunIO,
        snapshot: HomeserverSnapshot,
        network: NetworkFindings,
        *,
        notary_check: bool,
        third_parties: ThirdPartyAnswers | None = None,
    ) -> None:
        """`third_parties` is shared by the runs of a process; without it
        every run asks afresh (the `check` command's single run)."""
        self._third_parties = third_parties
        self._io = io
        self._snapshot = snapshot
        self._network = network
        self._notary_check = notary_check
        self._resolver = ServerNameResolver(
            io.resolver, io.http, wall_clock=io.wall_clock
        )

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        plan = plan_notary_checks(self._snapshot, notary_check=self._notary_check)
        results: list[CheckResult] = list(plan.skipped)
        if plan.notaries:
            results += await defer.gatherResults(
                [spawn(self._ask(n, deadline)) for n in plan.notaries],
                consumeErrors=True,
            )
        return FamilyOutcome(checks=tuple(results))

    def _minimum_valid_until_ts(self) -> tuple[int, bool]:
        """Ask for the key response we serve now.

        Synapse's notary answers from its cache only when the cached copy is
        valid until at least this; otherwise it fetches from us, and answers
        with whatever it has when that fails. Our current response is the
        newest there is, so a notary that returns it has fetched it from the
        outside since our server last refreshed it. Without a response seen
        on our public addresses, fall back to half a refresh interval ahead.
        """
        current = current_served_valid_until(self._network, self._snapshot.server_name)
        if current is not None:
            return current, True
        return notary_minimum_valid_until_ts(
            int(self._io.wall_clock() * 1000), self._snapshot.key_refresh_interval_ms
        ), False

    async def _ask(
        self, notary: TrustedKeyServerInfo, deadline: Deadline
    ) -> CheckResult:
        minimum, served = self._minimum_valid_until_ts()
        if self._third_parties is None:
            return await self._ask_now(notary, minimum, deadline)
        # The question: which of our keys, valid until when. A minimum
        # computed from the clock differs every run, so it is not part of it.
        question: Hashable = (
            "notary",
            notary.server_name,
            self._snapshot.server_name,
            self._snapshot.signing_keys[0].key_id,
            minimum if served else "clock",
        )
        answer = await self._third_parties.ask(
            question, lambda: self._ask_now(notary, minimum, deadline)
        )
        return attr.evolve(
            answer.value, details={**answer.value.details, "age_ms": answer.age_ms}
        )

    async def _ask_now(
        self, notary: TrustedKeyServerInfo, minimum: int, deadline: Deadline
    ) -> CheckResult:
        key = self._snapshot.signing_keys[0]
        found = await self._resolver.resolve(
            notary.server_name, deadline.share(NOTARY_DISCOVERY_SHARE)
        )
        unasked = {
            "url": f"https://{notary.server_name}{NOTARY_QUERY_PATH}",
            "host_header": notary.server_name,
            "sni": notary.server_name,
        }
        if not found.targets:
            return judge_notary_error(
                "unreachable",
                "the notary's name did not resolve to any address from here",
                notary=notary,
                request=unasked,
            )
        reach = notary_reach(found, self._snapshot.federation_ip_ranges)
        if not reach.usable:
            return judge_notary_blocked(reach.refused, notary=notary, request=unasked)
        target = reach.usable[0]
        body = json.dumps(
            build_notary_query(self._snapshot.server_name, [key.key_id], minimum)
        )
        result = await bounded_get(
            self._io.http,
            f"https://{target.hostname}:{target.port}{NOTARY_QUERY_PATH}",
            deadline,
            connect_to=(target.ip, target.port),
            host_header=target.host_header,
            sni=target.sni,
            max_bytes=MAX_BODY,
            method="POST",
            extra_headers={"Content-Type": "application/json"},
            body=body.encode("utf-8"),
        )
        request = result.request_details()
        if result.status is None:
            return judge_notary_error(
                error_kind(result), result.error_message, notary=notary, request=request
            )
        return judge_notary_answer(
            result.status,
            result.headers,
            result.body,
            notary=notary,
            server_name=self._snapshot.server_name,
            signing_key=key,
            minimum_valid_until_ts=minimum,
            request=request,
        )


def current_served_valid_until(
    network: NetworkFindings, server_name: str
) -> int | None:
    """The newest `valid_until_ts` of our own key responses that our public
    addresses served in this run, if any."""
    values = [
        keys.valid_until_ts
        for keys in network.served_keys.values()
        if keys.server_name == server_name and isinstance(keys.valid_until_ts, int)
    ]
    return max(values) if values else None
