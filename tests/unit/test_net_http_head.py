"""The response head bound of net/http.py: a peer that streams header lines
or continuation lines is cut off at MAX_RESPONSE_HEADERS lines or
MAX_RESPONSE_HEAD_BYTES bytes, with a named reason."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import Request, ResponseFailed
from twisted.web.http_headers import Headers

from synapse_fedhealth.net.http import (
    MAX_RESPONSE_HEAD_BYTES,
    MAX_RESPONSE_HEADERS,
    _HeadBoundedClientProtocol,
    classify_failure,
)
from synapse_fedhealth.net.results import ProbeError


def _start() -> tuple[Any, StringTransport, list[Any]]:
    protocol = _HeadBoundedClientProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    outcome: list[Any] = []
    request = Request(b"GET", b"/", Headers({b"Host": [b"peer.test"]}), None)
    protocol.request(request).addBoth(outcome.append)
    return protocol, transport, outcome


def _reason(outcome: list[Any]) -> ProbeError:
    assert len(outcome) == 1 and isinstance(outcome[0], Failure), outcome
    assert outcome[0].check(ResponseFailed)
    value = outcome[0].value
    assert value is not None
    return classify_failure(value)[0]


def test_endless_distinct_headers_end_as_headers_too_large() -> None:
    protocol, transport, outcome = _start()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
    for i in range(MAX_RESPONSE_HEADERS + 50):
        if outcome:
            break
        protocol.dataReceived(b"X-H%d: v\r\n" % i)
    assert _reason(outcome) is ProbeError.HEADERS_TOO_LARGE
    assert transport.disconnecting or transport.disconnected
    # Whatever still arrives is ignored, without an error.
    protocol.dataReceived(b"X-Late: 1\r\n")


def test_endless_continuation_lines_end_as_headers_too_large() -> None:
    protocol, _transport, outcome = _start()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nX-Folded: start\r\n")
    line = b" " + b"c" * 1000 + b"\r\n"
    for _ in range(MAX_RESPONSE_HEAD_BYTES // len(line) + 10):
        if outcome:
            break
        protocol.dataReceived(line)
    assert _reason(outcome) is ProbeError.HEADERS_TOO_LARGE
    assert "KiB" in str(outcome[0].value.reasons[0].value)


def test_a_normal_head_and_body_in_one_read_pass() -> None:
    protocol, _transport, outcome = _start()
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_RESPONSE_HEADERS - 2))
    body = b"x" * (MAX_RESPONSE_HEAD_BYTES + 1000)
    protocol.dataReceived(
        b"HTTP/1.1 200 OK\r\n"
        + headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    assert len(outcome) == 1 and not isinstance(outcome[0], Failure), outcome
    assert outcome[0].code == 200
