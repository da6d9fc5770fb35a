"""HTTPS probes: our own Agent, TLS policy, DNS and limits.

A probe connects to a *given* address while sending a *given* Host header and
SNI, as Synapse's MatrixFederationAgent does after server-name resolution.
Bodies are read with a size cap and the whole probe with a time cap
(slowloris-safe).

We call the Agent directly rather than through treq's HTTPClient: treq always
wraps it in a ContentDecoderAgent (it sends `Accept-Encoding: gzip`, which
Synapse peers don't, and a gzip body would inflate before our size cap sees
it) and a CookieAgent. treq.testing's in-memory agent still plugs in through
`agent_factory` for tests. Redirects are followed as Twisted's RedirectAgent follows
them (301, 302, 303, 307, 308), with the chain recorded. Failures never
raise: they come back as an `HttpResult` with an `error` kind.
"""

from __future__ import annotations

import io
import ipaddress
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attr
from twisted.internet import defer, error
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol
from twisted.web.client import (
    URI,
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseFailed,
)
from twisted.web.client import _HTTP11ClientFactory as _TwistedClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from synapse_fedhealth.net.addresses import (
    AddressClass,
    FederationIpRanges,
    classify_address,
    format_address,
)
from synapse_fedhealth.net.dns import DnsResolver
from synapse_fedhealth.net.results import ConnectOutcome, ProbeError
from synapse_fedhealth.net.results import HttpResult as HttpResult
from synapse_fedhealth.net.results import RedirectHop as RedirectHop
from synapse_fedhealth.net.tls import (
    CertificateRejected,
    KeptTlsConnection,
    PeerChainRecorder,
    RecordingConnectionCreator,
    TlsProbeResult,
    TrustStore,
    TwistedTlsProber,
    classify_connect_error,
)
from synapse_fedhealth.remote_text import clean_line

WELL_KNOWN_MAX_SIZE = 50 * 1024  # 50 KiB, as Synapse's well-known resolver
DEFAULT_MAX_BODY_SIZE = 256 * 1024  # 256 KiB: generous for keys/version answers
# Twisted's RedirectAgent default.
MAX_REDIRECTS = 20
REDIRECT_CODES = (301, 302, 303, 307, 308)
MAX_HEADERS_KEPT = 64
MAX_ADDRESSES_TRIED = 4
# Twisted's client keeps every header line and folded continuation line of a
# response head; its only limit is 16 KiB per line. A peer streaming header
# lines would grow the homeserver's memory until the probe's timeout, so the
# head of each response is bounded: lines and bytes.
MAX_RESPONSE_HEADERS = 100
MAX_RESPONSE_HEAD_BYTES = 64 * 1024

# `HttpResult.error` kinds, by their old names.
ERR_TIMEOUT = ProbeError.TIMEOUT
ERR_REFUSED = ProbeError.REFUSED
ERR_UNREACHABLE = ProbeError.UNREACHABLE
ERR_NO_ADDRESS = ProbeError.NO_ADDRESS
ERR_TLS = ProbeError.TLS
ERR_CERTIFICATE = ProbeError.CERTIFICATE
ERR_TOO_LARGE = ProbeError.TOO_LARGE
ERR_HEADERS_TOO_LARGE = ProbeError.HEADERS_TOO_LARGE
ERR_TRUNCATED = ProbeError.TRUNCATED
ERR_REDIRECT_LOOP = ProbeError.REDIRECT_LOOP
ERR_PRIVATE_REDIRECT = ProbeError.PRIVATE_REDIRECT
ERR_REDIRECT_SCHEME = ProbeError.REDIRECT_SCHEME
ERR_TOO_MANY_REDIRECTS = ProbeError.TOO_MANY_REDIRECTS
ERR_BAD_REDIRECT = ProbeError.BAD_REDIRECT
ERR_PROTOCOL = ProbeError.PROTOCOL
ERR_ERROR = ProbeError.ERROR


class HttpFetcher(Protocol):
    def get(
        self,
        url: str,
        *,
        connect_to: tuple[str, int] | None = None,
        host_header: str | None = None,
        sni: str | None = None,
        max_bytes: int = DEFAULT_MAX_BODY_SIZE,
        timeout: float,
        follow_redirects: bool = False,
        verify_tls: bool = True,
        method: str = "GET",
        extra_headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> defer.Deferred[HttpResult]:
        """GET `url`. The first hop connects to `connect_to` if given (else the
        URL's host, resolved through our DNS) with `host_header` and `sni`
        (default: from the URL). Never fails; bounded by `timeout` seconds."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _RequestSpec:
    """What is sent besides the URL: only GET follows redirects."""

    method: str
    headers: Mapping[str, str]
    body: bytes | None


class BodyTooLarge(Exception):
    pass


class BodyTruncated(Exception):
    pass


class HeadersTooLarge(Exception):
    pass


_HEAD_STATES = (STATUS, HEADER)


def _header_count(headers: Headers) -> int:
    return sum(len(values) for _, values in headers.getAllRawHeaders())


class _HeadBoundedClientProtocol(HTTP11ClientProtocol):
    """Twisted's HTTP/1.1 client protocol, with the response head bounded.

    The parser consumes what it is given at once, so whatever it was fed
    while it stayed in the head (status line, header lines, continuations)
    counts as head bytes; the memory held is at most the bound plus one
    read. A head over the bounds drops the connection and fails the
    request with `HeadersTooLarge`.
    """

    _head_bytes = 0

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        in_head = parser is not None and parser.state in _HEAD_STATES
        super().dataReceived(data)  # type: ignore[no-untyped-call]
        if (
            parser is None
            or not in_head
            or self._parser is not parser
            or parser.state not in _HEAD_STATES
        ):
            return  # the head ended in this read, or the request failed
        self._head_bytes += len(data)
        count = _header_count(parser.headers) + _header_count(parser.connHeaders)
        if self._head_bytes > MAX_RESPONSE_HEAD_BYTES or count > MAX_RESPONSE_HEADERS:
            self.transport.abortConnection()  # type: ignore[union-attr]
            self._giveUp(  # type: ignore[no-untyped-call]
                Failure(
                    HeadersTooLarge(
                        "the response head is larger than we read "
                        f"({count} header lines, {self._head_bytes} bytes so far; "
                        f"at most {MAX_RESPONSE_HEADERS} lines and "
                        f"{MAX_RESPONSE_HEAD_BYTES // 1024} KiB)"
                    )
                )
            )


class _HeadBoundedClientFactory(_TwistedClientFactory):
    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _HeadBoundedClientProtocol(self._quiescentCallback)  # type: ignore[no-untyped-call]


class _HeadBoundedPool(HTTPConnectionPool):
    """A pool whose connections bound the response head (see above)."""

    _factory = _HeadBoundedClientFactory


class _BoundedBodyCollector(TwistedProtocol):
    def __init__(self, done: defer.Deferred[bytes], max_bytes: int) -> None:
        self._done = done
        self._max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._max_bytes:
            self._done.errback(
                BodyTooLarge(f"the body is larger than {self._max_bytes} bytes")
            )
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        # ResponseDone and PotentialDataLoss (no length, connection closed) both
        # mean we got the whole body as sent.
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._chunks))
        elif reason.check(ResponseFailed, error.ConnectionLost, error.ConnectionDone):
            # Content-Length or chunked framing promised more than arrived.
            self._done.errback(
                BodyTruncated(
                    f"the connection closed after {self._size} bytes of the body, "
                    "before the end the response announced"
                )
            )
        else:
            self._done.errback(reason)


def read_body(response: Any, max_bytes: int) -> defer.Deferred[bytes]:
    """Read at most `max_bytes`; cancelling the Deferred drops the connection."""
    collector: _BoundedBodyCollector

    def _cancel(d: defer.Deferred[bytes]) -> None:
        transport = collector.transport
        if transport is not None:
            transport.stopProducing()

    length = getattr(response, "length", None)
    if isinstance(length, int) and length > max_bytes:
        # Announced too large: don't wait for it (it may also be slow).
        response.deliverBody(_Discard())
        return defer.fail(
            BodyTooLarge(
                f"the body is larger than {max_bytes} bytes (Content-Length: {length})"
            )
        )
    done: defer.Deferred[bytes] = defer.Deferred(_cancel)
    collector = _BoundedBodyCollector(done, max_bytes)
    response.deliverBody(collector)
    return done


@implementer(IStreamClientEndpoint)
class _FirstReachableEndpoint:
    """Connects to the first of `addresses` that accepts, then wraps TLS."""

    def __init__(
        self,
        reactor: Any,
        addresses: Sequence[tuple[str, int]],
        creator: Any,
        on_connect: Callable[[str], None],
    ) -> None:
        self._reactor = reactor
        self._addresses = addresses
        self._creator = creator
        self._on_connect = on_connect

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: Any) -> Any:
        first_error: BaseException | None = None
        for ip, port in self._addresses:
            cls = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
            tcp: Any = cls(self._reactor, ip, port)
            endpoint: Any = wrapClientTLS(self._creator, tcp)
            try:
                proto = await endpoint.connect(factory)
            except (defer.CancelledError, error.ConnectingCancelledError):
                raise  # the deadline: don't go on to the next address
            except Exception as e:
                first_error = first_error or e
                continue
            self._on_connect(format_address(ip, port))
            return proto
        raise first_error or error.ConnectError("no address to connect to")


@implementer(IAgentEndpointFactory)
class _FixedEndpointFactory:
    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: URI) -> Any:
        return self._endpoint


class _NoAddress(Exception):
    pass


@attr.s(slots=True, auto_attribs=True)
class _FetchState:
    """Mutable progress of one fetch, so a timeout can still report it."""

    current_url: str
    connected_to: str | None = None
    redirects: list[RedirectHop] = attr.ib(factory=list)
    recorder: PeerChainRecorder | None = None


# Given the endpoint a request would use, returns an IAgent.
AgentFactory = Callable[[Any], Any]


class ProbeHttpClient:
    """The production `HttpFetcher`.

    `agent_factory` lets tests substitute an in-memory agent (treq.testing's
    RequestTraversalAgent); it receives the endpoint the request would use.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: DnsResolver,
        trust: TrustStore,
        *,
        user_agent: str,
        agent_factory: AgentFactory | None = None,
        ip_ranges: FederationIpRanges | None = None,
    ) -> None:
        """`ip_ranges`: this homeserver's own; a redirect into a private
        address its ip_range_whitelist allows is followed."""
        self._reactor = reactor
        self._resolver = resolver
        self._trust = trust
        self._user_agent = user_agent
        self._agent_factory = agent_factory
        self._ip_ranges = ip_ranges

    def get(
        self,
        url: str,
        *,
        connect_to: tuple[str, int] | None = None,
        host_header: str | None = None,
        sni: str | None = None,
        max_bytes: int = DEFAULT_MAX_BODY_SIZE,
        timeout: float,
        follow_redirects: bool = False,
        verify_tls: bool = True,
        method: str = "GET",
        extra_headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> defer.Deferred[HttpResult]:
        return self._start(
            url,
            connect_to=connect_to,
            host_header=host_header,
            sni=sni,
            max_bytes=max_bytes,
            timeout=timeout,
            follow_redirects=follow_redirects,
            verify_tls=verify_tls,
            spec=_RequestSpec(method, dict(extra_headers or {}), body),
        )

    def pinned_target(
        self, tls: TwistedTlsProber, ip: str, port: int, sni: str
    ) -> PinnedTarget:
        """One target's connection, shared by its TLS probe and requests."""
        return PinnedTarget(self, tls, ip, port, sni)

    def _start(
        self,
        url: str,
        *,
        connect_to: tuple[str, int] | None,
        host_header: str | None,
        sni: str | None,
        max_bytes: int,
        timeout: float,
        follow_redirects: bool,
        verify_tls: bool,
        spec: _RequestSpec,
        via: _PinnedConnection | None = None,
    ) -> defer.Deferred[HttpResult]:
        parsed = urllib.parse.urlsplit(url)
        host_header = host_header if host_header is not None else parsed.netloc
        sni = sni if sni is not None else (parsed.hostname or "")
        base = HttpResult(url=url, host_header=host_header, sni=sni)
        state = _FetchState(current_url=url)
        started = self._reactor.seconds()
        deadline = started + timeout

        fetching = defer.Deferred.fromCoroutine(
            self._fetch(
                base,
                state,
                connect_to,
                max_bytes,
                deadline,
                follow_redirects,
                verify_tls,
                spec,
                via,
            )
        )
        fetching.addTimeout(max(0.0, timeout), self._reactor)

        def _on_error(f: Failure) -> HttpResult:
            kind, message, reason = classify_failure(f.value or Exception("unknown"))
            if kind == ERR_TIMEOUT:
                message = f"timed out after {timeout:.1f}s"
            return _finish(
                base, state, error=kind, error_message=message, tls_reason=reason
            )

        def _elapsed(result: HttpResult) -> HttpResult:
            return attr.evolve(
                result, elapsed_ms=round((self._reactor.seconds() - started) * 1000, 1)
            )

        fetching.addErrback(_on_error)
        fetching.addCallback(_elapsed)
        return fetching

    async def _fetch(
        self,
        base: HttpResult,
        state: _FetchState,
        connect_to: tuple[str, int] | None,
        max_bytes: int,
        deadline: float,
        follow_redirects: bool,
        verify_tls: bool,
        spec: _RequestSpec | None = None,
        via: _PinnedConnection | None = None,
    ) -> HttpResult:
        spec = spec or _RequestSpec("GET", {}, None)
        url = base.url
        visited = {url}
        host_header: str | None = base.host_header
        sni = base.sni
        # Where probes may connect (docs/reliability.md): a fetch that began
        # at a public address is not led by a redirect into a private network.
        private_ok = True
        while True:
            state.current_url = url
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme != "https":
                raise _Refused(ERR_REDIRECT_SCHEME, f"refusing a non-https URL: {url}")
            if connect_to is not None:
                addresses = [connect_to]
            else:
                addresses = await self._addresses_for(
                    parsed.hostname or "", parsed.port or 443, deadline
                )
                if not private_ok:
                    addresses = _public_only(addresses, url, self._ip_ranges)
            if not state.redirects:
                private_ok = all(
                    classify_address(ip) is not AddressClass.PUBLIC
                    for ip, _ in addresses
                )
            connect_to = None  # only the first hop is pinned
            if via is not None:
                response = await self._send_via(via, url, host_header, spec, state)
                via = None
            else:
                response = await self._send(
                    url, addresses, host_header, sni, spec, state, verify_tls
                )
            status = int(response.code)
            if follow_redirects and spec.method == "GET" and status in REDIRECT_CODES:
                url = _redirect_target(url, status, response, state, visited)
                new = urllib.parse.urlsplit(url)
                host_header = new.netloc
                sni = new.hostname or ""
                continue
            body = await read_body(response, max_bytes)
            return _finish(
                base,
                state,
                status=status,
                headers=_headers_dict(response.headers),
                body=body,
            )

    async def _send(
        self,
        url: str,
        addresses: Sequence[tuple[str, int]],
        host_header: str | None,
        sni: str,
        spec: _RequestSpec,
        state: _FetchState,
        verify_tls: bool,
    ) -> Any:
        """One request on a fresh connection to the first of `addresses` that
        accepts; the handshake is recorded in `state`."""
        recorder = PeerChainRecorder()
        state.recorder = recorder
        creator = RecordingConnectionCreator(
            sni, recorder, verify_with=self._trust if verify_tls else None
        )

        def _connected(address: str) -> None:
            state.connected_to = address

        endpoint = _FirstReachableEndpoint(
            self._reactor, addresses, creator, _connected
        )
        return await self._request(self._make_agent(endpoint), url, host_header, spec)

    async def _send_via(
        self,
        via: _PinnedConnection,
        url: str,
        host_header: str | None,
        spec: _RequestSpec,
        state: _FetchState,
    ) -> Any:
        """One request over `via`'s connection (or a new one to the same
        address if the server closed it)."""
        agent: Any = (
            self._agent_factory(via.endpoint)
            if self._agent_factory is not None
            else Agent.usingEndpointFactory(
                self._reactor, _FixedEndpointFactory(via.endpoint), pool=via.pool
            )
        )
        response = await self._request(agent, url, host_header, spec)
        # The request may have ridden a connection made for an earlier one.
        state.connected_to = via.address
        state.recorder = via.endpoint.recorder
        return response

    async def _request(
        self, agent: Any, url: str, host_header: str | None, spec: _RequestSpec
    ) -> Any:
        headers = Headers(
            {b"User-Agent": [self._user_agent.encode("latin-1", "replace")]}
        )
        if host_header:
            headers.setRawHeaders(b"Host", [host_header.encode("ascii", "replace")])
        for name, value in spec.headers.items():
            headers.setRawHeaders(
                name.encode("ascii"), [value.encode("latin-1", "replace")]
            )
        producer = (
            FileBodyProducer(io.BytesIO(spec.body)) if spec.body is not None else None
        )
        try:
            request_uri = url.encode("ascii")
        except UnicodeEncodeError:
            raise _Refused(ERR_BAD_REDIRECT, f"not an ASCII URL: {url!r}") from None
        return await agent.request(
            spec.method.encode("ascii"), request_uri, headers, producer
        )

    def _make_agent(self, endpoint: Any) -> Any:
        if self._agent_factory is not None:
            return self._agent_factory(endpoint)
        pool = _HeadBoundedPool(self._reactor, persistent=False)  # type: ignore[no-untyped-call]
        return Agent.usingEndpointFactory(
            self._reactor, _FixedEndpointFactory(endpoint), pool=pool
        )

    async def _addresses_for(
        self, host: str, port: int, deadline: float
    ) -> list[tuple[str, int]]:
        bare = host.strip("[]")
        try:
            ipaddress.ip_address(bare)
            literal = True
        except ValueError:
            literal = False
        if literal:
            candidates = [bare]
        else:
            remaining = max(0.0, deadline - self._reactor.seconds())
            results = await defer.gatherResults(
                [
                    self._resolver.lookup(host, rdtype, remaining)
                    for rdtype in ("AAAA", "A")
                ],
                consumeErrors=True,
            )
            candidates = [a for r in results for a in r.addresses]
            if not candidates:
                described = "; ".join(f"{r.rdtype}: {r.describe()}" for r in results)
                raise _NoAddress(f"{host} has no address ({described})")
        # Never connect to addresses that are unsafe to probe.
        safe = [
            a for a in candidates if classify_address(a) is not AddressClass.FORBIDDEN
        ]
        if not safe:
            raise _NoAddress(
                f"{host} resolves only to addresses we never connect to: {', '.join(candidates)}"
            )
        return [(a, port) for a in safe[:MAX_ADDRESSES_TRIED]]


@implementer(IStreamClientEndpoint)
class _AdoptingEndpoint:
    """Connects to one address: the first time through the probe's kept
    connection if it is still open, else with a handshake of its own (no
    verification: the target's chain is judged from the probe)."""

    def __init__(self, reactor: Any, ip: str, port: int, sni: str) -> None:
        self._reactor = reactor
        self._address = (ip, port)
        self._sni = sni
        self._kept: KeptTlsConnection | None = None
        # The handshake of the connection the latest request rode.
        self.recorder = PeerChainRecorder()
        self.connections = 0  # connections made or adopted
        self._made: list[Any] = []  # their HTTP client protocols
        self._discarded = False

    def offer(self, kept: KeptTlsConnection | None) -> None:
        self._kept = kept
        if kept is not None:
            self.recorder = kept.recorder

    def discard(self) -> None:
        """Drop every connection at once: the kept one if nobody took it,
        and those the requests rode (a TLS close would wait for the peer).
        A connection still being made is dropped when it is made."""
        self._discarded = True
        if self._kept is not None:
            self._kept.close()
            self._kept = None
        for protocol in self._made:
            _abort(protocol)
        self._made.clear()

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        if self._discarded:
            return defer.fail(error.ConnectError("the target's connections are closed"))
        self.connections += 1
        kept, self._kept = self._kept, None
        if kept is not None and kept.usable:
            protocol = kept.adopt(protocolFactory)
            self._made.append(protocol)
            return defer.succeed(protocol)
        recorder = PeerChainRecorder()
        self.recorder = recorder
        creator = RecordingConnectionCreator(self._sni, recorder)
        fresh = _FirstReachableEndpoint(
            self._reactor, [self._address], creator, lambda address: None
        )
        connecting = fresh.connect(protocolFactory)

        def made(protocol: Any) -> Any:
            if self._discarded:
                _abort(protocol)
            else:
                self._made.append(protocol)
            return protocol

        return connecting.addCallback(made)


def _abort(protocol: Any) -> None:
    transport = protocol.transport
    if transport is not None and protocol.state != "CONNECTION_LOST":
        transport.abortConnection()


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _PinnedConnection:
    address: str
    endpoint: _AdoptingEndpoint
    pool: HTTPConnectionPool


class PinnedTarget:
    """One target (address, port, SNI) and the one TLS connection a run
    keeps to it: the handshake probe's connection is kept, and the requests
    (the probes', then the later checks') ride it one after another
    (HTTP/1.1 keep-alive), as a peer's connection pool does. A request made
    while the connection is busy, or after the server closed it, gets a
    connection of its own (a handshake without verification: the chain is
    judged from the probe). `close`, when the run ends, drops them all."""

    def __init__(
        self,
        client: ProbeHttpClient,
        tls: TwistedTlsProber,
        ip: str,
        port: int,
        sni: str,
    ) -> None:
        self._client = client
        self._tls = tls
        self._ip, self._port, self._sni = ip, port, sni
        reactor = client._reactor
        pool = _HeadBoundedPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        pool.maxPersistentPerHost = 1
        endpoint = _AdoptingEndpoint(reactor, ip, port, sni)
        self._via = _PinnedConnection(format_address(ip, port), endpoint, pool)
        self._closed = False
        self._in_flight = 0  # requests sent and not answered yet
        # Requests waiting for the connection to be free, first come first.
        self._waiting: list[defer.Deferred[None]] = []

    @property
    def connections(self) -> int:
        """How many connections the requests made or adopted."""
        return self._via.endpoint.connections

    def handshake(self, timeout: float) -> defer.Deferred[TlsProbeResult]:
        probing = self._tls.probe_and_keep(self._ip, self._port, self._sni, timeout)

        def keep(
            outcome: tuple[TlsProbeResult, KeptTlsConnection | None],
        ) -> TlsProbeResult:
            result, kept = outcome
            if self._closed:
                if kept is not None:
                    kept.close()
            else:
                self._via.endpoint.offer(kept)
            return result

        return probing.addCallback(keep)

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
        """A request on the target's connection (never a redirect followed:
        the answer is the target's own). While another request rides the
        connection, it waits for it at most `wait_for_connection_s` (within
        `timeout`), then takes a connection of its own. After `close` it is
        not sent."""
        spec = _RequestSpec(method, dict(extra_headers or {}), body)
        if self._in_flight and wait_for_connection_s > 0 and not self._closed:
            return defer.Deferred.fromCoroutine(
                self._send_when_free(
                    url,
                    host_header,
                    timeout,
                    max_bytes,
                    spec,
                    min(wait_for_connection_s, timeout),
                )
            )
        return self._send(url, host_header, timeout, max_bytes, spec)

    async def _send_when_free(
        self,
        url: str,
        host_header: str,
        timeout: float,
        max_bytes: int,
        spec: _RequestSpec,
        wait_s: float,
    ) -> HttpResult:
        clock = self._client._reactor
        started = clock.seconds()
        until = started + wait_s
        while self._in_flight and not self._closed:
            left = until - clock.seconds()
            if left <= 0:
                break
            freed: defer.Deferred[None] = defer.Deferred()
            self._waiting.append(freed)
            freed.addTimeout(left, clock)
            try:
                await freed
            except defer.TimeoutError:
                break  # still busy: a connection of its own
            finally:
                if freed in self._waiting:
                    self._waiting.remove(freed)
        spent = clock.seconds() - started
        return await self._send(
            url, host_header, max(0.0, timeout - spent), max_bytes, spec
        )

    def _send(
        self,
        url: str,
        host_header: str,
        timeout: float,
        max_bytes: int,
        spec: _RequestSpec,
    ) -> defer.Deferred[HttpResult]:
        if self._closed:
            return defer.succeed(
                HttpResult(
                    url=url,
                    host_header=host_header,
                    sni=self._sni,
                    error=ERR_ERROR,
                    error_message="not sent: the run had ended",
                )
            )
        self._in_flight += 1
        sending = self._client._start(
            url,
            connect_to=(self._ip, self._port),
            host_header=host_header,
            sni=self._sni,
            max_bytes=max_bytes,
            timeout=timeout,
            follow_redirects=False,
            verify_tls=False,
            spec=spec,
            via=self._via,
        )
        sending.addBoth(self._answered)
        return sending

    def _answered(self, result: Any) -> Any:
        self._in_flight -= 1
        # The connection is back in the pool by now (Twisted returns it
        # before the response ends): the first waiter takes it.
        while not self._in_flight and self._waiting:
            waiter = self._waiting.pop(0)
            if not waiter.called:
                waiter.callback(None)
        return result

    def close(self) -> None:
        """Drop every connection to the target, in use or idle, at once."""
        self._closed = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:  # they find it closed: nothing is sent
            if not waiter.called:
                waiter.callback(None)
        self._via.endpoint.discard()
        self._via.pool.closeCachedConnections()


def _public_only(
    addresses: list[tuple[str, int]], url: str, ip_ranges: FederationIpRanges | None
) -> list[tuple[str, int]]:
    public = [
        a
        for a in addresses
        if classify_address(a[0]) is AddressClass.PUBLIC
        or (ip_ranges is not None and ip_ranges.allowed(a[0]))
    ]
    if not public:
        listed = ", ".join(format_address(ip, port) for ip, port in addresses)
        raise _Refused(
            ERR_PRIVATE_REDIRECT,
            f"a redirect from a public address to {url}, which resolves only to "
            f"private addresses ({listed}): not followed, as peers refuse "
            "private addresses (Synapse's default ip_range_blacklist)",
        )
    return public


class _Refused(Exception):
    def __init__(self, kind: ProbeError, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Discard(TwistedProtocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        pass


def _redirect_target(
    url: str, status: int, response: Any, state: _FetchState, visited: set[str]
) -> str:
    """Where a redirect leads, as Twisted's RedirectAgent follows it, with the
    hop recorded; refused when it loops, leaves https or goes on too long."""
    location = _last_header(response.headers, b"location")
    if location is None:
        raise _Refused(
            ERR_BAD_REDIRECT, f"HTTP {status} redirect without a Location header"
        )
    if clean_line(location) != location:
        raise _Refused(
            ERR_BAD_REDIRECT,
            f"HTTP {status} redirect to a URL with control characters: "
            f"{clean_line(location)[:300]}",
        )
    next_url = urllib.parse.urljoin(url, location)
    state.redirects.append(
        RedirectHop(
            url=url,
            status=status,
            location=next_url,
            headers=_headers_dict(response.headers),
        )
    )
    # Don't read the redirect body: drop the connection.
    response.deliverBody(_Discard())
    if urllib.parse.urlsplit(next_url).scheme != "https":
        raise _Refused(
            ERR_REDIRECT_SCHEME, f"redirect from https to another scheme: {next_url}"
        )
    if next_url in visited:
        raise _Refused(
            ERR_REDIRECT_LOOP, f"redirect loop: {next_url} was already visited"
        )
    if len(state.redirects) >= MAX_REDIRECTS:
        raise _Refused(ERR_TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS} redirects")
    visited.add(next_url)
    return next_url


def _finish(base: HttpResult, state: _FetchState, **changes: Any) -> HttpResult:
    not_after = None
    if state.recorder is not None and state.recorder.chain:
        not_after = state.recorder.chain[0].not_valid_after_utc.timestamp()
    return attr.evolve(
        base,
        final_url=state.current_url,
        connected_to=state.connected_to,
        redirects=tuple(state.redirects),
        cert_not_after=not_after,
        **changes,
    )


def _last_header(headers: Headers, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


def _headers_dict(headers: Headers) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name, values in headers.getAllRawHeaders():
        if len(out) >= MAX_HEADERS_KEPT:
            break
        out[clean_line(name.decode("latin-1").lower())] = tuple(
            clean_line(v.decode("latin-1")[:1000]) for v in values[:8]
        )
    return out


def _unwrap(exc: BaseException) -> list[BaseException]:
    """Twisted wraps the real causes in ResponseNeverReceived & co."""
    reasons = getattr(exc, "reasons", None)
    if isinstance(exc, ResponseFailed) or (isinstance(reasons, list) and reasons):
        out: list[BaseException] = []
        for r in reasons or []:
            inner = r.value if isinstance(r, Failure) else r
            if isinstance(inner, BaseException):
                out.extend(_unwrap(inner))
        return out or [exc]
    return [exc]


def classify_failure(exc: BaseException) -> tuple[ProbeError, str, str | None]:
    """(error kind, message, certificate reason) for a failed fetch."""
    causes = _unwrap(exc)
    for cause in causes:
        if isinstance(cause, CertificateRejected):
            return ERR_CERTIFICATE, str(cause), cause.verification.reason
    cause = causes[0]
    if isinstance(cause, _Refused):
        return cause.kind, str(cause), None
    if isinstance(cause, _NoAddress):
        return ERR_NO_ADDRESS, str(cause), None
    if isinstance(cause, BodyTooLarge):
        return ERR_TOO_LARGE, str(cause), None
    if isinstance(cause, HeadersTooLarge):
        return ERR_HEADERS_TOO_LARGE, str(cause), None
    if isinstance(cause, BodyTruncated):
        return ERR_TRUNCATED, str(cause), None
    if isinstance(
        cause,
        (
            defer.TimeoutError,
            defer.CancelledError,
            error.TimeoutError,
            error.ConnectingCancelledError,
        ),
    ):
        return ERR_TIMEOUT, "timed out", None
    from OpenSSL import SSL

    if isinstance(cause, SSL.Error):
        return ERR_TLS, f"TLS handshake failed: {_ssl_message(cause)}", None
    if isinstance(cause, error.ConnectError):
        outcome = classify_connect_error(cause)
        kind = (
            ProbeError.UNREACHABLE
            if outcome == ConnectOutcome.ERROR
            else ProbeError(outcome.value)
        )
        return kind, _short(cause), None
    if isinstance(cause, (error.ConnectionDone, error.ConnectionLost)):
        return (
            ERR_PROTOCOL,
            "the connection closed before a complete HTTP response",
            None,
        )
    if type(cause).__name__ in (
        "ParseError",
        "BadHeaders",
        "_WrapperException",
        "ResponseFailed",
        "ResponseNeverReceived",
    ):
        return ERR_PROTOCOL, f"malformed HTTP response: {_short(cause)}", None
    return ERR_ERROR, f"{type(cause).__name__}: {_short(cause)}", None


def _ssl_message(e: BaseException) -> str:
    args = e.args[0] if e.args else None
    if isinstance(args, list):
        parts = [
            str(item[2]) for item in args if isinstance(item, tuple) and len(item) == 3
        ]
        if parts:
            return clean_line(", ".join(parts))[:300]
    return _short(e)


def _short(e: BaseException, limit: int = 300) -> str:
    text = clean_line(str(e) or type(e).__name__)
    return text if len(text) <= limit else text[:limit] + "…"
