"""proxy.forwarded_headers: judging what the echo resource saw."""

from __future__ import annotations

import json
from typing import Any

import attr
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_fedhealth.checks.forwarded import (
    ECHO_MAC_HEADER,
    FORWARDED_HEADERS,
    EchoRecord,
    judge_forwarded_headers,
    judge_forwarded_headers_error,
    normalise_host,
)
from synapse_fedhealth.homeserver import ListenerInfo
from synapse_fedhealth.report import CheckResult, Status
from tests.unit.insider_helpers import PROPERTY_SETTINGS, REQUEST, json_values

HOST = "matrix.example.com"
PROXIED_LISTENER = ListenerInfo(
    index=0,
    type="http",
    port=8008,
    bind_addresses=("127.0.0.1",),
    x_forwarded=True,
    resources=frozenset({"client", "federation"}),
)
GOOD_PROXIED = EchoRecord(
    x_forwarded_for="203.0.113.9",
    x_forwarded_proto="https",
    host=HOST,
    peer="127.0.0.1:51234",
    tls=False,
    listener_port=8008,
    listener_tag="8008",
    listener_x_forwarded=True,
)
GOOD_DIRECT = EchoRecord(
    host=HOST,
    peer="203.0.113.9:40000",
    tls=True,
    listener_port=443,
    listener_tag="443",
    listener_x_forwarded=False,
)


def judge(
    record: EchoRecord | None, *, status: int = 200, body: bytes | None = None
) -> CheckResult:
    if body is None:
        body = json.dumps(record.to_json() if record else {}).encode()
    return judge_forwarded_headers(
        status,
        {"content-type": ["application/json"]},
        body,
        sent_host=HOST,
        listeners=(PROXIED_LISTENER,),
        request=REQUEST,
    )


CASES: list[tuple[str, EchoRecord, Status, list[str]]] = [
    ("proxied, all good", GOOD_PROXIED, Status.OK, []),
    ("direct TLS, all good", GOOD_DIRECT, Status.OK, []),
    (
        "host with default port",
        attr.evolve(GOOD_PROXIED, host=HOST + ":443"),
        Status.OK,
        [],
    ),
    (
        "no X-Forwarded-For",
        attr.evolve(GOOD_PROXIED, x_forwarded_for=None),
        Status.WARN,
        ["X-Forwarded-For did not arrive"],
    ),
    (
        "no X-Forwarded-Proto",
        attr.evolve(GOOD_PROXIED, x_forwarded_proto=None),
        Status.WARN,
        ["X-Forwarded-Proto did not arrive"],
    ),
    (
        "X-Forwarded-Proto http",
        attr.evolve(GOOD_PROXIED, x_forwarded_proto="http"),
        Status.WARN,
        ["X-Forwarded-Proto arrived as 'http'"],
    ),
    (
        "Host rewritten",
        attr.evolve(GOOD_PROXIED, host="127.0.0.1:8008"),
        Status.WARN,
        ["Host header arrived as '127.0.0.1:8008'"],
    ),
    (
        "x_forwarded off behind a proxy",
        attr.evolve(GOOD_PROXIED, listener_x_forwarded=False),
        Status.WARN,
        ["`x_forwarded` off"],
    ),
    (
        "proxy sends nothing, x_forwarded off",
        attr.evolve(
            GOOD_PROXIED,
            x_forwarded_for=None,
            x_forwarded_proto=None,
            listener_x_forwarded=False,
        ),
        Status.WARN,
        [
            "X-Forwarded-For did not arrive",
            "X-Forwarded-Proto did not arrive",
            "`x_forwarded` off",
        ],
    ),
    (
        "x_forwarded on without a proxy",
        attr.evolve(GOOD_DIRECT, listener_x_forwarded=True),
        Status.WARN,
        ["without a proxy but has `x_forwarded: true`"],
    ),
]


@pytest.mark.parametrize(
    ("record", "expected", "fragments"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_judgement(record: EchoRecord, expected: Status, fragments: list[str]) -> None:
    result = judge(record)
    assert result.id == FORWARDED_HEADERS
    assert result.status is expected, result.summary
    for fragment in fragments:
        assert fragment in result.summary
    if expected is Status.WARN:
        assert result.fix
    for field in ("url", "host_header", "sni"):
        assert result.details[field] == REQUEST[field]


def test_listener_is_named_from_the_snapshot() -> None:
    result = judge(attr.evolve(GOOD_PROXIED, listener_x_forwarded=False))
    assert "listeners[0]" in result.summary
    assert "x_forwarded: true" in (result.fix or "")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, b"<html>404</html>"),
        (404, b'{"errcode": "M_NOT_FOUND", "error": "Unknown or expired echo nonce"}'),
        (200, b"<!doctype html><html>SPA</html>"),
        (502, b""),
    ],
)
def test_not_routed_skips(status: int, body: bytes) -> None:
    result = judge(None, status=status, body=body)
    assert result.status is Status.SKIP
    assert "skipped" in result.summary


NONCE = "2000000000.abcdef.0123"


def _verify(nonce: str, body: bytes, mac: str) -> bool:
    return nonce == NONCE and mac == "good-mac-for-" + body.decode()


def _judge_signed(headers: dict[str, list[str]], record: EchoRecord) -> CheckResult:
    return judge_forwarded_headers(
        200,
        {"content-type": ["application/json"], **headers},
        json.dumps(record.to_json()).encode(),
        sent_host=HOST,
        listeners=(PROXIED_LISTENER,),
        request=REQUEST,
        nonce=NONCE,
        verify_answer=_verify,
    )


def test_a_signed_answer_is_judged() -> None:
    body = json.dumps(GOOD_PROXIED.to_json())
    result = _judge_signed({ECHO_MAC_HEADER: ["good-mac-for-" + body]}, GOOD_PROXIED)
    assert result.status is Status.OK, result.summary
    assert result.details["received"] == GOOD_PROXIED.to_json()


def test_an_unsigned_answer_did_not_come_from_this_server() -> None:
    result = _judge_signed({}, GOOD_PROXIED)
    assert result.status is Status.SKIP
    assert result.details["reason"] == "unauthenticated"
    assert "did not come from this server" in result.summary
    assert "received" not in result.details


def test_a_forged_answer_did_not_come_from_this_server() -> None:
    # Even the MAC of another body is refused: it covers the exact bytes.
    other = json.dumps(GOOD_DIRECT.to_json())
    for mac in ("0" * 64, "good-mac-for-" + other):
        result = _judge_signed({ECHO_MAC_HEADER.lower(): [mac]}, GOOD_PROXIED)
        assert result.status is Status.WARN
        assert result.details["reason"] == "bad_mac"
        assert "did not come from this server" in result.summary
        assert result.fix


def test_errors() -> None:
    timeout = judge_forwarded_headers_error("timeout", "", request=REQUEST)
    assert timeout.status is Status.WARN and timeout.details["reason"] == "timeout"
    assert "timed out" in timeout.summary
    refused = judge_forwarded_headers_error("refused", "nope", request=REQUEST)
    assert refused.status is Status.SKIP


def test_record_round_trip() -> None:
    assert EchoRecord.from_json(GOOD_PROXIED.to_json()) == GOOD_PROXIED
    assert EchoRecord.from_json({"type": "something else"}) is None


def test_normalise_host() -> None:
    assert normalise_host("Example.COM:443", "https") == "example.com"
    assert normalise_host("example.com:8448", "https") == "example.com:8448"


@PROPERTY_SETTINGS
@given(obj=json_values)
def test_property_any_json(obj: Any) -> None:
    assert isinstance(judge(None, body=json.dumps(obj).encode()), CheckResult)


@PROPERTY_SETTINGS
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [
                "x_forwarded_for",
                "x_forwarded_proto",
                "host",
                "peer",
                "tls",
                "listener",
                "forwarded",
            ]
        ),
        json_values,
    ),
    status=st.integers(0, 999),
)
def test_property_echo_shaped_json(fields: dict[str, Any], status: int) -> None:
    body = json.dumps({"type": "fedhealth.echo", **fields}).encode()
    result = judge(None, status=status, body=body)
    assert isinstance(result, CheckResult)
    assert result.status in (Status.OK, Status.SKIP) or result.fix
