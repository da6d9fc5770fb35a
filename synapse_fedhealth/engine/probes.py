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
from cryptography import x509
from twisted.internet import defer

from synapse_fedhealth.checks.federation import KEYS_PATH, VERSION_PATH, endpoint_url
from synapse_fedhealth.engine.deadline import BoundFailure, Deadline
from synapse_fedhealth.engine.resolution import bounded_get
from synapse_fedhealth.engine.spawn import spawn
from synapse_fedhealth.net.aia import IssuerFetcher
from synapse_fedhealth.net.http import HttpFetcher
from synapse_fedhealth.net.results import ConnectOutcome, HttpResult, TlsProbeResult
from synapse_fedhealth.net.tls import (
    IssuerFetch,
    TlsProber,
    TrustStore,
    issuer_urls_to_fetch,
)
from synapse_fedhealth.server_discovery import Target


@attr.s(slots=True, auto_attribs=True)
class TargetProbe:
    """What the probes of one target saw; None: that probe did not finish."""

    tls: TlsProbeResult | None = None
    version: HttpResult | None = None
    keys: HttpResult | None = None
    # The AIA caIssuers answers for a chain whose issuer OpenSSL can't find
    # (None: not looked up: the chain verifies, or no fetcher).
    issuers: tuple[IssuerFetch, ...] | None = None


class TargetProber:
    """`trust` and `issuers`: with both, a served chain whose issuer is
    neither sent nor trusted gets its AIA caIssuers URLs fetched after the
    handshake, so that the judge can tell a missing intermediate from an
    untrusted CA."""

    def __init__(
        self,
        http: HttpFetcher,
        tls: TlsProber,
        *,
        trust: TrustStore | None = None,
        issuers: IssuerFetcher | None = None,
    ) -> None:
        self._http = http
        self._tls = tls
        self._trust = trust
        self._issuers = issuers
        # One lookup per URL per run: every address serves the same chain.
        self._fetched: dict[str, defer.Deferred[IssuerFetch]] = {}

    async def probe_targets(
        self, targets: Sequence[Target], deadline: Deadline
    ) -> Mapping[str, TargetProbe]:
        """address ("ip:port") -> what its probes saw by `deadline`."""
        probes = {t.address: TargetProbe() for t in targets}
        await deadline.bound(
            lambda: defer.gatherResults(
                [spawn(self._probe(t, probes[t.address], deadline)) for t in targets],
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
            if into.tls.chain:
                await self._look_up_issuers(into.tls.chain, into, until)

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
            [spawn(c) for c in (tls(), version(), keys())],
            consumeErrors=True,
        )

    async def _look_up_issuers(
        self, chain: Sequence[x509.Certificate], into: TargetProbe, until: Deadline
    ) -> None:
        if self._trust is None or self._issuers is None:
            return
        urls = issuer_urls_to_fetch(chain, self._trust)
        if urls is None:
            return

        async def fetch(url: str) -> IssuerFetch:
            return await until.bound(
                lambda: self._fetch_issuer(url, until),
                lambda failure: IssuerFetch(url=url, error=str(failure)),
                what="an AIA issuer fetch",
            )

        fetched: list[IssuerFetch] = await defer.gatherResults(
            [spawn(fetch(url)) for url in urls], consumeErrors=True
        )
        into.issuers = tuple(fetched)

    def _fetch_issuer(self, url: str, until: Deadline) -> defer.Deferred[IssuerFetch]:
        """The run's one fetch of `url`, for one more address waiting on it."""
        issuers = self._issuers
        assert issuers is not None
        if url not in self._fetched:
            first = issuers.fetch(url, until.remaining_s())
            # By contract it never fails; if it did, each waiter gets a reason.
            first.addErrback(lambda f: IssuerFetch(url=url, error=str(f.value)))
            self._fetched[url] = first
        waiter: defer.Deferred[IssuerFetch] = defer.Deferred()
        self._fetched[url].addCallback(_hand_to, waiter)
        return waiter


def _hand_to(result: IssuerFetch, waiter: defer.Deferred[IssuerFetch]) -> IssuerFetch:
    if not waiter.called:  # (a waiter cut short by its deadline has fired)
        waiter.callback(result)
    return result


def _failed_tls(target: Target, failure: BoundFailure) -> TlsProbeResult:
    timed_out = failure.kind == "timeout"
    return TlsProbeResult(
        ip=target.ip,
        port=target.port,
        sni=target.sni,
        connect=ConnectOutcome.TIMEOUT if timed_out else ConnectOutcome.ERROR,
        connect_error="timed out" if timed_out else "unexpected error",
    )
