"""Checks of our own public federation addresses, once resolved (SPEC 4.4):
is the key served there ours (federation.key_matches_local), and does a
request signed as a peer signs pass (federation.signed_request)?"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer

from synapse_fedhealth.check_ids import Family, ids_of
from synapse_fedhealth.checks.connection import REACHABLE
from synapse_fedhealth.checks.keys_local import (
    KEY_MATCHES_LOCAL,
    judge_key_matches_local,
)
from synapse_fedhealth.checks.signed_request import (
    SIGNED_REQUEST,
    SignedRequest,
    build_signed_request,
    judge_signed_request,
    judge_signed_request_error,
    signed_request_precheck,
)
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.engine.probes import request_to_target
from synapse_fedhealth.engine.spawn import spawn
from synapse_fedhealth.families.outside import MAX_BODY, error_kind
from synapse_fedhealth.homeserver import HomeserverSnapshot
from synapse_fedhealth.report import CheckResult, Status, skip
from synapse_fedhealth.runner import FamilyOutcome
from synapse_fedhealth.server_discovery import Target
from synapse_fedhealth.wiring import RunIO


class TargetInsiderFamily:
    name = Family.TARGETS.value
    check_ids: Sequence[str] = ids_of(Family.TARGETS)

    def __init__(
        self, io: RunIO, snapshot: HomeserverSnapshot, network: NetworkFindings
    ) -> None:
        self._http = io.http
        self._connections = io.targets
        self._snapshot = snapshot
        self._network = network

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        checks = self._key_matches_local()
        checks += await self._signed_requests(deadline)
        return FamilyOutcome(checks=tuple(checks))

    def _key_matches_local(self) -> list[CheckResult]:
        served = self._network.served_keys
        if not served:
            return [
                skip(
                    KEY_MATCHES_LOCAL,
                    "not run: no address served /_matrix/key/v2/server (see "
                    "federation.keys)",
                )
            ]
        by_address = {t.address: t for t in self._network.targets}
        results = []
        for address, keys in served.items():
            target = by_address.get(address)
            request = {
                "url": f"https://{target.host_header if target else address}/_matrix/key/v2/server",
                "host_header": target.host_header if target else None,
                "sni": target.sni if target else None,
                "connected_to": address,
            }
            results.append(
                judge_key_matches_local(
                    keys.raw,
                    server_name=self._snapshot.server_name,
                    signing_keys=self._snapshot.signing_keys,
                    request=request,
                    target=address,
                )
            )
        return results

    async def _signed_requests(self, deadline: Deadline) -> list[CheckResult]:
        precheck = signed_request_precheck(self._snapshot)
        if precheck is not None:
            return [precheck]
        if not self._network.targets:
            return [
                skip(
                    SIGNED_REQUEST,
                    "not run: no target address to send it to (see discovery.addresses)",
                )
            ]
        # A dead address is connection.reachable's finding; peers move on to
        # the next one, and so does this probe.
        reachable = {
            c.target
            for c in self._network.checks
            if c.id == REACHABLE and c.status is Status.OK
        }
        targets = [t for t in self._network.targets if t.address in reachable]
        if not targets:
            return [
                skip(
                    SIGNED_REQUEST,
                    "not run: no address is reachable (see connection.reachable)",
                )
            ]
        # Our signed probes come from our own origin, so this server's
        # rc_federation applies to them as to any peer: beyond `sleep_limit`
        # in a window Synapse delays each by sleep_delay (a 16-address run took
        # 0.5 s more), beyond `concurrent` it queues them and logs each one.
        # So a run signs to the first `sleep_limit` addresses (the order peers
        # try them), `concurrent` at a time.
        limit = self._snapshot.own_origin_limit
        signed_to, not_sent = targets[: limit.sleep_limit], targets[limit.sleep_limit :]
        key = self._snapshot.signing_keys[0]
        signed = build_signed_request(key, self._snapshot.server_name)
        in_flight = defer.DeferredSemaphore(limit.concurrent)

        async def send(target: Target) -> CheckResult:
            await in_flight.acquire()
            try:
                return await self._send(signed, target, key.key_id, deadline)
            finally:
                in_flight.release()

        results: list[CheckResult] = list(
            await defer.gatherResults(
                [spawn(send(t)) for t in signed_to], consumeErrors=True
            )
        )
        return results + [
            skip(
                SIGNED_REQUEST,
                f"not sent: this server's rc_federation lets one origin send "
                f"{limit.sleep_limit} requests per {limit.window_ms} ms before "
                f"delaying them, and the first {len(signed_to)} addresses were "
                "signed to",
                target=t.address,
                details={"reason": "own_rate_limit"},
            )
            for t in not_sent
        ]

    async def _send(
        self, signed: SignedRequest, target: Target, key_id: str, deadline: Deadline
    ) -> CheckResult:
        # On the target's connection, as a peer's pool sends it; unverified
        # (tls.certificate judges the certificate; this is about the URI).
        result = await request_to_target(
            self._connections,
            self._http,
            target,
            f"https://{target.host_header}{signed.path}",
            deadline,
            max_bytes=MAX_BODY,
            method=signed.method,
            extra_headers=signed.headers,
        )
        request = result.request_details()
        if result.status is None:
            return judge_signed_request_error(
                error_kind(result),
                result.error_message,
                request=request,
                target=target.address,
            )
        return judge_signed_request(
            result.status,
            result.headers,
            result.body,
            server_name=self._snapshot.server_name,
            request=request,
            key_id=key_id,
            target=target.address,
        )
