"""Per-target probes: the TLS handshake, `GET /_matrix/federation/v1/version`
and `GET /_matrix/key/v2/server`, sent as a peer sends them (its Host header
and SNI) to one address of the discovery's targets.

`probe_targets` probes every target concurrently under one deadline and
returns what arrived; a probe that did not finish is simply absent, and the
judge reports it as timed out. A target's probes share one TLS connection
(the handshake's), as a peer's connection pool would: the requests follow
the handshake, one after the other. That connection is the run's
(`TargetConnections`): the later checks that go to the same target ride it
too, and the runner closes it when the run ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attr
from cryptography import x509
from twisted.internet import defer

from synapse_fedhealth.checks.federation import KEYS_PATH, VERSION_PATH, endpoint_url
from synapse_fedhealth.engine.deadline import (
    CONNECTION_WAIT_SHARE,
    KEYS_WAIT_SHARE,
    BoundFailure,
    Clock,
    Deadline,
)
from synapse_fedhealth.engine.resolution import bounded_get, failed_get
from synapse_fedhealth.engine.spawn import spawn
from synapse_fedhealth.net.aia import IssuerFetcher
from synapse_fedhealth.net.http import DEFAULT_MAX_BODY_SIZE, HttpFetcher
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


class TargetConnection(Protocol):
    """One target's connection for a run: the TLS handshake, then the
    requests. The production one (`net.http.PinnedTarget`) carries them all
    on the handshake's connection."""

    def handshake(self, timeout: float) -> defer.Deferred[TlsProbeResult]:
        """Connect and handshake with the target's SNI. Never fails."""

    def get(
        self,
        url: str,
        *,
        host_header: str,
        timeout: float,
        max_bytes: int = DEFAULT_MAX_BODY_SIZE,
        method: str = "GET",
        extra_headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        wait_for_connection_s: float = 0.0,
    ) -> defer.Deferred[HttpResult]:
        """Send a request for `url` to the target (no verification: the
        chain is judged from the handshake), its body read up to
        `max_bytes`. One request at a time rides the kept connection: while
        it is busy, wait for it at most `wait_for_connection_s`, then take
        a connection of its own. Never fails."""

    def close(self) -> None:
        """Drop whatever connection is left."""


TargetConnector = Callable[[Target], TargetConnection]


class TargetConnections:
    """The run's connections to its targets: one per target address, made
    on first use and the same for the rest of the run, so the checks that
    follow the probes ride the probes' connection as a peer's connection
    pool would. `close_all` (the runner, when the run ends) drops them all;
    a connection asked for after that is closed already."""

    def __init__(self, connect: TargetConnector) -> None:
        self._connect = connect
        self._by_address: dict[str, TargetConnection] = {}
        self._closed = False

    def for_target(self, target: Target) -> TargetConnection:
        connection = self._by_address.get(target.address)
        if connection is None:
            connection = self._connect(target)
            self._by_address[target.address] = connection
            if self._closed:
                connection.close()
        return connection

    def close_all(self) -> None:
        self._closed = True
        for connection in self._by_address.values():
            connection.close()


class SeparateConnections:
    """A `TargetConnection` from a `TlsProber` and an `HttpFetcher`: each
    probe on a connection of its own (what fakes provide)."""

    def __init__(self, http: HttpFetcher, tls: TlsProber, target: Target) -> None:
        self._http = http
        self._tls = tls
        self._target = target

    def handshake(self, timeout: float) -> defer.Deferred[TlsProbeResult]:
        t = self._target
        return self._tls.probe(t.ip, t.port, t.sni, timeout)

    def get(
        self,
        url: str,
        *,
        host_header: str,
        timeout: float,
        max_bytes: int = DEFAULT_MAX_BODY_SIZE,
        method: str = "GET",
        extra_headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        wait_for_connection_s: float = 0.0,
    ) -> defer.Deferred[HttpResult]:
        t = self._target
        return self._http.get(
            url,
            connect_to=(t.ip, t.port),
            host_header=host_header,
            sni=t.sni,
            timeout=timeout,
            max_bytes=max_bytes,
            verify_tls=False,
            method=method,
            extra_headers=extra_headers,
            body=body,
        )

    def close(self) -> None:
        pass


async def request_to_target(
    connections: TargetConnections | None,
    http: HttpFetcher,
    target: Target,
    url: str,
    until: Deadline,
    *,
    max_bytes: int,
    method: str = "GET",
    extra_headers: Mapping[str, str] | None = None,
) -> HttpResult:
    """A later check's request to one of the run's targets, as a peer sends
    it (the target's Host header and SNI, no verification: the chain is
    judged from the probe), cut at `until`. It rides the target's connection
    when the run keeps them (`connections`), else it goes through `http` on
    a connection of its own."""
    if connections is None:
        return await bounded_get(
            http,
            url,
            until,
            connect_to=(target.ip, target.port),
            host_header=target.host_header,
            sni=target.sni,
            max_bytes=max_bytes,
            verify_tls=False,
            method=method,
            extra_headers=extra_headers,
        )
    connection = connections.for_target(target)

    def failed(failure: BoundFailure) -> HttpResult:
        return failed_get(url, target.host_header, target.sni, failure)

    return await until.bound(
        lambda: connection.get(
            url,
            host_header=target.host_header,
            timeout=until.remaining_s(),
            max_bytes=max_bytes,
            method=method,
            extra_headers=extra_headers,
            # Another check's request may be riding it (the signed request
            # and the echo go to the first target at once).
            wait_for_connection_s=until.remaining_s() * CONNECTION_WAIT_SHARE,
        ),
        failed,
        what="an HTTP request",
    )


class TargetProber:
    """`trust` and `issuers`: with both, a served chain whose issuer is
    neither sent nor trusted gets its AIA caIssuers URLs fetched after the
    handshake, so that the judge can tell a missing intermediate from an
    untrusted CA. `connections`: the run's connections to its targets,
    which the probes leave open for the checks that follow (default:
    `SeparateConnections` over `http` and `tls`, nothing kept)."""

    def __init__(
        self,
        http: HttpFetcher,
        tls: TlsProber,
        *,
        trust: TrustStore | None = None,
        issuers: IssuerFetcher | None = None,
        connections: TargetConnections | None = None,
    ) -> None:
        self._connections = connections or TargetConnections(
            lambda target: SeparateConnections(http, tls, target)
        )
        self._trust = trust
        self._issuers = issuers
        # One lookup per URL per run: every address serves the same chain.
        self._fetched: dict[str, defer.Deferred[IssuerFetch]] = {}

    async def probe_targets(
        self, targets: Sequence[Target], deadline: Deadline
    ) -> Mapping[str, TargetProbe]:
        """address ("ip:port") -> what its probes saw by `deadline`. Every
        target is probed at once."""
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
        # Not closed here: it is the run's, for the checks that follow.
        connection = self._connections.for_target(target)
        await self._probe_through(connection, target, into, until)

    async def _probe_through(
        self,
        connection: TargetConnection,
        target: Target,
        into: TargetProbe,
        until: Deadline,
    ) -> None:
        # The handshake first: the requests ride its connection.
        into.tls = await until.bound(
            lambda: connection.handshake(until.remaining_s()),
            lambda failure: _failed_tls(target, failure),
            what="a TLS probe",
        )

        async def issuers() -> None:
            if into.tls is not None and into.tls.chain:
                await self._look_up_issuers(into.tls.chain, into, until)

        async def endpoint(path: str) -> HttpResult:
            url = endpoint_url(target, path)

            def failed(failure: BoundFailure) -> HttpResult:
                return failed_get(url, target.host_header, target.sni, failure)

            return await until.bound(
                lambda: connection.get(
                    url, host_header=target.host_header, timeout=until.remaining_s()
                ),
                failed,
                what="an HTTP request",
            )

        async def version() -> None:
            into.version = await endpoint(VERSION_PATH)

        async def requests() -> None:
            # One request at a time keeps one connection; but a version
            # endpoint that hangs must not cost the keys their answer, so
            # after a while the keys request takes a connection of its own.
            asking_version = spawn(version())
            await _settled_or_after(
                asking_version, until.remaining_s() * KEYS_WAIT_SHARE, until.clock
            )
            into.keys = await endpoint(KEYS_PATH)
            await asking_version

        await defer.gatherResults(
            [spawn(c) for c in (issuers(), requests())],
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


def _settled_or_after(
    d: defer.Deferred[Any], seconds: float, clock: Clock
) -> defer.Deferred[None]:
    """Fires when `d` has a result or after `seconds`, whichever is first;
    `d` keeps its result."""
    timer: Any = None

    def _cancel(_: defer.Deferred[None]) -> None:
        if timer is not None and timer.active():
            timer.cancel()

    out: defer.Deferred[None] = defer.Deferred(_cancel)

    def _fire(result: object = None) -> object:
        if not out.called:
            _cancel(out)
            out.callback(None)
        return result

    timer = clock.callLater(max(0.0, seconds), _fire)
    d.addBoth(_fire)
    return out


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
