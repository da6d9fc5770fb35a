"""ProbeHttpClient over treq.testing's in-memory agent: redirects, limits,
timeouts, error classification (no sockets)."""

from __future__ import annotations

from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from synapse_fedhealth.net.http import (
    ERR_NO_ADDRESS,
    ERR_REDIRECT_LOOP,
    ERR_REDIRECT_SCHEME,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    HttpResult,
    ProbeHttpClient,
    classify_failure,
)
from synapse_fedhealth.net.tls import TrustStore
from tests.unit.fakes import FakeResolver


class Site(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes | None, bytes | None]] = []

    def render_GET(self, request: Request) -> Any:
        self.seen.append(
            (request.path, request.getHeader(b"host"), request.getHeader(b"user-agent"))
        )
        path = request.path
        if path == b"/loop":
            request.setResponseCode(302)
            request.setHeader(b"location", b"/loop")
            return b""
        if path == b"/to-http":
            request.setResponseCode(301)
            request.setHeader(b"location", b"http://example.com/final")
            return b""
        if path == b"/permanent":
            request.setResponseCode(308)
            request.setHeader(b"location", b"https://other.example.com/final")
            return b""
        if path == b"/big":
            return b"x" * 100_000
        if path == b"/slow":
            request.write(b"{")
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return b'{"m.server": "matrix.example.com:443"}'


# The one name with an address; every other question is NXDOMAIN.
DNS_RECORDS = {("other.example.com", "A"): ["203.0.113.9"]}


class ProbeHttpClientTest(SynchronousTestCase):
    def setUp(self) -> None:
        self.site = Site()
        self.agent = RequestTraversalAgent(self.site)
        self.reactor = MemoryReactorClock()
        self.client = ProbeHttpClient(
            self.reactor,
            FakeResolver(DNS_RECORDS),
            TrustStore(),
            user_agent="Synapse/1.163.2",
            agent_factory=lambda endpoint: self.agent,
        )

    def fetch(self, url: str, *, advance: float = 0, **kw: Any) -> HttpResult:
        d = self.client.get(
            url,
            connect_to=("203.0.113.7", 443),
            host_header="example.com",
            sni="example.com",
            timeout=5,
            **kw,
        )
        for _ in range(20):
            self.agent.flush()
        if advance:
            self.reactor.advance(advance)
            self.agent.flush()
        return self.successResultOf(d)

    def test_plain_get_sends_host_and_user_agent(self) -> None:
        result = self.fetch("https://example.com/.well-known/matrix/server")
        assert result.status == 200
        assert result.content_type == "application/json"
        assert self.site.seen[0][1:] == (b"example.com", b"Synapse/1.163.2")
        assert result.request_details()["host_header"] == "example.com"

    def test_308_followed_to_other_host(self) -> None:
        result = self.fetch("https://example.com/permanent", follow_redirects=True)
        assert result.status == 200
        assert [h.status for h in result.redirects] == [308]
        assert result.final_url == "https://other.example.com/final"
        assert self.site.seen[-1][1] == b"other.example.com"

    def test_redirects_not_followed_unless_asked(self) -> None:
        assert self.fetch("https://example.com/permanent").status == 308

    def test_redirect_loop(self) -> None:
        result = self.fetch("https://example.com/loop", follow_redirects=True)
        assert result.error == ERR_REDIRECT_LOOP

    def test_redirect_to_http_refused(self) -> None:
        result = self.fetch("https://example.com/to-http", follow_redirects=True)
        assert result.error == ERR_REDIRECT_SCHEME
        assert len(result.redirects) == 1

    def test_body_limit(self) -> None:
        result = self.fetch("https://example.com/big", max_bytes=50 * 1024)
        assert result.error == ERR_TOO_LARGE

    def test_slow_body_times_out(self) -> None:
        result = self.fetch("https://example.com/slow", advance=6)
        assert result.error == ERR_TIMEOUT
        assert "timed out" in result.error_message

    def test_redirect_to_unresolvable_host(self) -> None:
        d = self.client.get("https://nowhere.example.com/", timeout=5)
        assert self.successResultOf(d).error == ERR_NO_ADDRESS


def test_classify_connect_errors() -> None:
    assert classify_failure(error.ConnectionRefusedError())[0] == "refused"
    assert classify_failure(error.TCPTimedOutError())[0] == "timeout"
    assert classify_failure(error.NoRouteError())[0] == "unreachable"
    assert classify_failure(defer.TimeoutError())[0] == "timeout"
    assert classify_failure(RuntimeError("x"))[0] == "error"
