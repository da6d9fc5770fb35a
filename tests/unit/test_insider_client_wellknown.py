"""client.well_known: table of answers; never a fail."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_fedhealth.checks.client_wellknown import (
    CLIENT_WELL_KNOWN,
    judge_client_well_known,
    judge_client_well_known_error,
    normalise_base_url,
)
from synapse_fedhealth.report import CheckResult, Status
from tests.unit.insider_helpers import (
    PROPERTY_SETTINGS,
    REQUEST,
    SERVER_NAME,
    json_values,
)

BASE = "https://matrix.example.com/"
CORS = {"access-control-allow-origin": ["*"], "content-type": ["application/json"]}


def body_for(base_url: object) -> bytes:
    return json.dumps({"m.homeserver": {"base_url": base_url}}).encode()


def judge(
    status: int,
    headers: dict[str, list[str]],
    body: bytes,
    public_baseurl: str | None = BASE,
) -> CheckResult:
    return judge_client_well_known(
        status,
        headers,
        body,
        public_baseurl=public_baseurl,
        server_name=SERVER_NAME,
        request=REQUEST,
    )


CASES: list[tuple[str, int, dict[str, list[str]], bytes, Status, list[str]]] = [
    ("good", 200, CORS, body_for(BASE), Status.OK, []),
    ("no trailing slash", 200, CORS, body_for(BASE.rstrip("/")), Status.OK, []),
    (
        "case and port",
        200,
        CORS,
        body_for("HTTPS://Matrix.Example.com:443"),
        Status.OK,
        [],
    ),
    ("missing", 404, {}, b"<html>", Status.WARN, ["no client well-known"]),
    ("server error", 500, CORS, b"", Status.WARN, ["HTTP 500"]),
    ("not json", 200, CORS, b"<html>", Status.WARN, ["not a JSON object"]),
    (
        "no base_url",
        200,
        CORS,
        b'{"m.homeserver": {}}',
        Status.WARN,
        ["no `m.homeserver.base_url`"],
    ),
    (
        "base_url number",
        200,
        CORS,
        body_for(5),
        Status.WARN,
        ["no `m.homeserver.base_url`"],
    ),
    (
        "other base_url",
        200,
        CORS,
        body_for("https://other.example/"),
        Status.WARN,
        ["other.example"],
    ),
    (
        "no CORS",
        200,
        {"content-type": ["application/json"]},
        body_for(BASE),
        Status.WARN,
        ["Access-Control-Allow-Origin: *` is missing"],
    ),
    (
        "wrong CORS",
        200,
        {"access-control-allow-origin": ["https://app.element.io"]},
        body_for(BASE),
        Status.WARN,
        ["not `*`"],
    ),
    (
        "two problems",
        200,
        {},
        body_for("https://other.example/"),
        Status.WARN,
        ["other.example", "Access-Control-Allow-Origin"],
    ),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected", "fragments"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_table(
    status: int,
    headers: dict[str, list[str]],
    body: bytes,
    expected: Status,
    fragments: list[str],
) -> None:
    result = judge(status, headers, body)
    assert result.id == CLIENT_WELL_KNOWN
    assert result.status is expected, result.summary
    for fragment in fragments:
        assert fragment in result.summary
    if expected is Status.WARN:
        assert result.fix
    for field in ("url", "host_header", "sni"):
        assert result.details[field] == REQUEST[field]


def test_unset_public_baseurl_compares_with_synapse_default() -> None:
    result = judge(200, CORS, body_for(f"https://{SERVER_NAME}"), public_baseurl=None)
    assert result.status is Status.OK
    assert "note" in result.details


def test_errors_warn_never_fail() -> None:
    result = judge_client_well_known_error(
        "timeout", "", server_name=SERVER_NAME, request=REQUEST
    )
    assert result.status is Status.WARN
    assert result.details["reason"] == "timeout"
    assert "timed out" in result.summary


def test_normalise_base_url() -> None:
    assert normalise_base_url("https://[::1]:443/") == "https://[::1]"
    assert normalise_base_url("https://h:8448/x/") == "https://h:8448/x"
    assert normalise_base_url("http://[bad") == "http://[bad"


@PROPERTY_SETTINGS
@given(
    status=st.integers(0, 999),
    body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    base=st.text(max_size=40),
)
def test_property_never_fails_never_raises(status: int, body: bytes, base: str) -> None:
    result = judge(status, CORS, body)
    assert isinstance(result, CheckResult)
    assert result.status in (Status.OK, Status.WARN)
    wk = judge(200, {}, body_for(base), public_baseurl=base or None)
    assert wk.status in (Status.OK, Status.WARN)


@PROPERTY_SETTINGS
@given(url=st.text(max_size=60))
def test_property_normalise_never_raises(url: Any) -> None:
    assert isinstance(normalise_base_url(url), str)
