"""The echo resource and its nonce book."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from synapse.api.errors import NotFoundError
from synapse.http.site import SynapseRequest, XForwardedForRequest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.http_headers import Headers

from synapse_fedhealth.checks.forwarded import (
    ECHO_MAC_HEADER,
    EchoRecord,
    judge_forwarded_headers,
)
from synapse_fedhealth.echo import (
    MAX_NONCE_CHARS,
    EchoResource,
    NonceBook,
    echo_record_of,
    nonce_from_path,
    secret_from_signing_key,
)
from synapse_fedhealth.report import Status
from tests.unit.insider_helpers import PROPERTY_SETTINGS, REQUEST


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def book(clock: Clock | None = None, **kw: Any) -> NonceBook:
    return NonceBook(clock=clock or Clock(), secret=b"s" * 32, **kw)


# --- the nonce book -----------------------------------------------------------


def test_issued_nonce_is_valid_and_recordable() -> None:
    nonces = book()
    nonce = nonces.issue()
    assert nonces.is_valid(nonce)
    assert nonces.recorded(nonce) is None
    assert nonces.record(nonce, EchoRecord(host="h"))
    assert nonces.recorded(nonce) == EchoRecord(host="h")


def test_nonce_expires() -> None:
    clock = Clock()
    nonces = book(clock, ttl_s=10)
    nonce = nonces.issue()
    clock.now += 11
    assert not nonces.is_valid(nonce)
    assert not nonces.record(nonce, EchoRecord())
    nonces.issue()  # issuing drops expired entries
    assert nonces.recorded(nonce) is None


def test_book_is_bounded() -> None:
    nonces = book(max_nonces=3)
    issued = [nonces.issue() for _ in range(10)]
    assert len(nonces) == 3
    assert nonces.recorded(issued[0]) is None
    assert not nonces.record(issued[0], EchoRecord())  # evicted: not stored
    assert nonces.record(issued[-1], EchoRecord())


def test_tampered_or_foreign_nonces_are_refused() -> None:
    nonces = book()
    nonce = nonces.issue()
    expiry, rand, mac = nonce.split(".")
    assert not nonces.is_valid(f"{int(expiry) + 1000}.{rand}.{mac}")
    assert not nonces.is_valid(f"{expiry}.{rand}.{'0' * len(mac)}")
    assert not nonces.is_valid("")
    assert not nonces.is_valid("x" * (MAX_NONCE_CHARS + 1))
    other = NonceBook(clock=Clock(), secret=b"t" * 32)
    assert not other.is_valid(nonce)


def test_shared_secret_lets_another_process_check_but_not_store() -> None:
    secret = secret_from_signing_key(b"\x01" * 32)
    issuer = NonceBook(clock=Clock(), secret=secret)
    worker = NonceBook(clock=Clock(), secret=secret)
    nonce = issuer.issue()
    assert worker.is_valid(nonce)
    assert not worker.record(nonce, EchoRecord())
    assert len(worker) == 0


def test_unknown_nonce_stores_nothing() -> None:
    nonces = book()
    assert not nonces.record("1.2.3", EchoRecord())
    assert len(nonces) == 0


@PROPERTY_SETTINGS
@given(st.text(max_size=300))
def test_property_any_nonce_text_is_refused_without_raising(text: str) -> None:
    nonces = book()
    assert not nonces.is_valid(text)
    assert not nonces.record(text, EchoRecord())
    assert len(nonces) == 0


def test_a_nonce_is_single_use() -> None:
    nonces = book()
    nonce = nonces.issue()
    assert nonces.claim(nonce)
    assert not nonces.claim(nonce)
    assert not nonces.claim("1.2.3")


def test_single_use_holds_for_another_process_sharing_the_secret() -> None:
    secret = secret_from_signing_key(b"\x02" * 32)
    issuer = NonceBook(clock=Clock(), secret=secret)
    worker = NonceBook(clock=Clock(), secret=secret)
    nonce = issuer.issue()
    assert worker.claim(nonce)
    assert not worker.claim(nonce)
    assert len(worker) == 0  # claiming records no echo


def test_used_nonces_are_forgotten_when_they_expire_and_bounded() -> None:
    clock = Clock()
    issuer = NonceBook(clock=clock, secret=b"s" * 32, ttl_s=10)
    worker = NonceBook(clock=clock, secret=b"s" * 32, ttl_s=10, max_nonces=4)
    used = [issuer.issue() for _ in range(10)]
    for nonce in used:
        assert worker.claim(nonce)
    assert worker.used_count() <= 4
    clock.now += 11
    worker.claim(issuer.issue())  # claiming drops expired entries
    assert worker.used_count() == 1


def test_answer_mac_covers_the_nonce_and_the_exact_body() -> None:
    nonces = book()
    nonce, other = nonces.issue(), nonces.issue()
    body, mac = nonces.sign_answer(nonce, {"type": "fedhealth.echo", "host": "h"})
    assert nonces.verify_answer(nonce, body, mac)
    assert not nonces.verify_answer(other, body, mac)
    assert not nonces.verify_answer(nonce, body + b" ", mac)
    other_digit = "1" if mac[-1] == "0" else "0"
    assert not nonces.verify_answer(nonce, body, mac[:-1] + other_digit)
    assert not nonces.verify_answer(nonce, body, "")
    assert not NonceBook(clock=Clock(), secret=b"t" * 32).verify_answer(
        nonce, body, mac
    )


def test_nonce_from_path() -> None:
    assert nonce_from_path([b"abc"]) == "abc"
    assert nonce_from_path([b"abc", b""]) == "abc"
    assert nonce_from_path([]) is None
    assert nonce_from_path([b"a", b"b"]) is None
    assert nonce_from_path([b"\xff"]) is None
    assert nonce_from_path([b"a" * (MAX_NONCE_CHARS + 1)]) is None


# --- reading the request --------------------------------------------------------


class _Channel:
    def __init__(self, peer: Any, secure: bool) -> None:
        self._peer = peer
        self._secure = secure

    def getPeer(self) -> Any:
        return self._peer

    def isSecure(self) -> bool:
        return self._secure


class _Site:
    site_tag = "main"


def _fake_request(
    cls: type[SynapseRequest],
    headers: dict[bytes, list[bytes]],
    *,
    peer: Any = None,
    host: Any = None,
    secure: bool = False,
    postpath: list[bytes] | None = None,
) -> Any:
    """A Synapse request object without the Site/Channel machinery."""
    request: Any = cls.__new__(cls)
    request.requestHeaders = Headers(headers)
    request.responseHeaders = Headers()
    request.channel = _Channel(peer or IPv4Address("TCP", "127.0.0.1", 50000), secure)
    request._forcedSecure = False
    request.synapse_site = _Site()
    request.postpath = postpath or []
    local = host or IPv4Address("TCP", "127.0.0.1", 8008)
    request.getHost = lambda: local
    return request


def test_record_from_a_proxied_request() -> None:
    request = _fake_request(
        XForwardedForRequest,
        {
            b"X-Forwarded-For": [b"203.0.113.9, 10.0.0.1"],
            b"X-Forwarded-Proto": [b"https"],
            b"Host": [b"matrix.example.com"],
        },
    )
    record = echo_record_of(request)
    assert record == EchoRecord(
        x_forwarded_for="203.0.113.9, 10.0.0.1",
        x_forwarded_proto="https",
        host="matrix.example.com",
        peer="127.0.0.1:50000",
        tls=False,
        listener_port=8008,
        listener_tag="main",
        listener_x_forwarded=True,
    )


def test_record_from_a_direct_request() -> None:
    request = _fake_request(
        SynapseRequest,
        {b"Host": [b"example.com"], b"X-Forwarded-For": [b"1.2.3.4"]},
        peer=IPv6Address("TCP", "2001:db8::1", 4000),
        host=IPv6Address("TCP", "::", 8448),
        secure=True,
    )
    record = echo_record_of(request)
    assert record.listener_x_forwarded is False
    assert record.tls is True
    assert record.peer == "[2001:db8::1]:4000"
    assert record.listener_port == 8448
    # A header a client sends without a proxy is reported, not trusted.
    assert record.x_forwarded_for == "1.2.3.4"


def test_record_on_a_unix_socket_and_huge_headers() -> None:
    request = _fake_request(
        XForwardedForRequest,
        {b"Host": [b"h" * 10_000]},
        peer=UNIXAddress(b"/run/synapse.sock"),
        host=UNIXAddress(b"/run/synapse.sock"),
    )
    record = echo_record_of(request)
    assert record.listener_port is None
    assert record.peer == "unix:/run/synapse.sock"
    assert record.host is not None and len(record.host) == 256


# --- the resource ------------------------------------------------------------------


def _render(resource: EchoResource, request: Any) -> Any:
    d = defer.ensureDeferred(resource._async_render_GET(request))
    results: list[Any] = []
    d.addBoth(results.append)
    assert results
    return results[0]


def test_resource_answers_a_valid_nonce_and_records_it() -> None:
    nonces = NonceBook(secret=b"k" * 32)
    resource = EchoResource(nonces)
    nonce = nonces.issue()
    request = _fake_request(
        XForwardedForRequest,
        {
            b"X-Forwarded-For": [b"203.0.113.9"],
            b"X-Forwarded-Proto": [b"https"],
            b"Host": [b"example.com"],
        },
        postpath=[nonce.encode()],
    )
    request.setHeader = lambda name, value: request.responseHeaders.setRawHeaders(
        name, [value]
    )
    code, body = _render(resource, request)
    assert code == 200
    assert nonces.recorded(nonce) == EchoRecord.from_json(body)
    assert request.responseHeaders.getRawHeaders(b"Cache-Control") == [b"no-store"]
    # The answer is exactly what the check judges.
    import json

    result = judge_forwarded_headers(
        200, {}, json.dumps(body).encode(), sent_host="example.com", request=REQUEST
    )
    assert result.status is Status.OK, result.summary


def test_resource_signs_its_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import synapse_fedhealth.echo

    sent: list[tuple[int, bytes]] = []
    monkeypatch.setattr(
        synapse_fedhealth.echo,
        "respond_with_json_bytes",
        lambda request, code, body, send_cors=False: sent.append((code, body)),
    )
    nonces = NonceBook(secret=b"k" * 32)
    resource = EchoResource(nonces)
    nonce = nonces.issue()
    request = _fake_request(
        XForwardedForRequest,
        {b"X-Forwarded-Proto": [b"https"], b"Host": [b"example.com"]},
        postpath=[nonce.encode()],
    )
    request.setHeader = lambda name, value: request.responseHeaders.setRawHeaders(
        name, [value]
    )
    code, answer = _render(resource, request)
    resource._send_response(request, code, answer)
    ((sent_code, body),) = sent
    assert sent_code == 200
    (mac,) = request.responseHeaders.getRawHeaders(ECHO_MAC_HEADER.encode())
    assert nonces.verify_answer(nonce, body, mac.decode())
    result = judge_forwarded_headers(
        200,
        {ECHO_MAC_HEADER: [mac.decode()]},
        body,
        sent_host="example.com",
        request=REQUEST,
        nonce=nonce,
        verify_answer=nonces.verify_answer,
    )
    # Believed (judged on its headers), not refused as a foreign answer.
    assert result.details.get("reason") not in ("unauthenticated", "bad_mac")
    assert "received" in result.details, result.summary
    # The nonce was used: a replay of the same request is refused.
    replay = _fake_request(SynapseRequest, {}, postpath=[nonce.encode()])
    assert isinstance(_render(resource, replay).value, NotFoundError)


@pytest.mark.parametrize("segment", [b"nope", b"1.2.3", b""])
def test_resource_refuses_unknown_nonces(segment: bytes) -> None:
    nonces = NonceBook(secret=b"k" * 32)
    resource = EchoResource(nonces)
    request = _fake_request(SynapseRequest, {}, postpath=[segment])
    outcome = _render(resource, request)
    assert isinstance(outcome.value, NotFoundError)
    assert len(nonces) == 0


def test_resource_is_a_leaf() -> None:
    assert EchoResource.isLeaf
