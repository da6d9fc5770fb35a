"""Per-target probes: the TLS handshake, `GET /_matrix/federation/v1/version`
and `GET /_matrix/key/v2/server`, sent as a peer sends them (its Host header
and SNI) to one address of the discovery's targets.

`probe_targets` runs every probe of every target concurrently under one
deadline and returns what arrived; a probe that did not finish is simply
absent, and the judge reports it as timed out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attr
from twisted.internet import defer

from synapse_fedhealth.checks.federation import KEYS_PATH, VERSION_PATH, endpoint_url
from synapse_fedhealth.engine.deadline import BoundFailure, Deadline
from synapse_fedhealth.engine.resolution import bounded_get
from synapse_fedhealth.net.http import HttpFetcher
from synapse_fedhealth.net.results import ConnectOutcome, HttpResult, TlsProbeResult
from synapse_fedhealth.net.tls import TlsProber
from synapse_fedhealth.server_discovery import Target


@attr.s(slots=True, auto_attribs=True)
class TargetProbe:
    """What the probes of one target saw; None: that probe did not finish."""

    tls: TlsProbeResult | None = None
    version: HttpResult | None = None
    keys: HttpResult | None = None


class TargetProber:
    def __init__(self, http: HttpFetcher, tls: TlsProber) -> None:
        self._http = http
        self._tls = tls

    async def probe_targets(
        self, targets: Sequence[Target], deadline: Deadline
    ) -> Mapping[str, TargetProbe]:
        """address ("ip:port") -> what its probes saw by `deadline`."""
        probes = {t.address: TargetProbe() for t in targets}
        await deadline.bound(
            lambda: defer.gatherResults(
                [
                    defer.ensureDeferred(self._probe(t, probes[t.address], deadline))
                    for t in targets
                ],
                consumeErrors=True,
            ),
            lambda failure: [],
            what="the target probes",
        )
        return probes

    async def _probe(self, target: Target, into: TargetProbe, until: Deadline) -> None:
        async def tls() -> None:
            into.tls = await until.bound(
                lambda: self._tls.probe(
                    target.ip, target.port, target.sni, until.remaining_s()
                ),
                lambda failure: _failed_tls(target, failure),
                what="a TLS probe",
            )

        async def endpoint(path: str) -> HttpResult:
            return await bounded_get(
                self._http,
                endpoint_url(target, path),
                until,
                connect_to=(target.ip, target.port),
                host_header=target.host_header,
                sni=target.sni,
                # The chain is judged by tls.certificate; here we want to see
                # what answers behind it, as a peer would if it trusted it.
                verify_tls=False,
            )

        async def version() -> None:
            into.version = await endpoint(VERSION_PATH)

        async def keys() -> None:
            into.keys = await endpoint(KEYS_PATH)

        await defer.gatherResults(
            [defer.ensureDeferred(c) for c in (tls(), version(), keys())],
            consumeErrors=True,
        )


def _failed_tls(target: Target, failure: BoundFailure) -> TlsProbeResult:
    timed_out = failure.kind == "timeout"
    return TlsProbeResult(
        ip=target.ip,
        port=target.port,
        sni=target.sni,
        connect=ConnectOutcome.TIMEOUT if timed_out else ConnectOutcome.ERROR,
        connect_error="timed out" if timed_out else "unexpected error",
    )
