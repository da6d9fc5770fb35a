"""Pure discovery logic: server names, well-known, SRV, addresses, targets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_fedhealth.checks.discovery import (
    check_addresses,
    check_srv,
    check_targets,
    check_well_known,
    check_well_known_consistency,
)
from synapse_fedhealth.matrix_names import parse_and_validate_server_name
from synapse_fedhealth.net.results import DnsOutcome, DnsResult, HttpResult, SrvRecord
from synapse_fedhealth.report import Status
from synapse_fedhealth.server_discovery import (
    HostAddresses,
    Target,
    WellKnownKind,
    WellKnownOutcome,
    cache_lifetime,
    decide_srv,
    interpret_well_known,
)

URL = "https://example.com/.well-known/matrix/server"
NOW = 1.7e9  # unix seconds: what dates an Expires header


def interpret(http: HttpResult) -> WellKnownOutcome:
    return interpret_well_known(http, now=NOW)


def http(
    status: int | None = 200,
    body: bytes = b"",
    ctype: str | None = "application/json",
    **kw: Any,
) -> HttpResult:
    headers: dict[str, tuple[str, ...]] = {"content-type": (ctype,)} if ctype else {}
    headers.update(kw.pop("headers", {}))
    return HttpResult(
        url=URL,
        host_header="example.com",
        sni="example.com",
        status=status,
        body=body,
        headers=headers,
        **kw,
    )


def a(
    host: str, *ips: str, outcome: DnsOutcome | None = None, rdtype: str = "A"
) -> DnsResult:
    if outcome is None:
        outcome = DnsOutcome.ANSWER if ips else DnsOutcome.NXDOMAIN
    return DnsResult(qname=host, rdtype=rdtype, outcome=outcome, addresses=ips)


def host(name: str, *ips: str) -> HostAddresses:
    v4 = tuple(i for i in ips if ":" not in i)
    v6 = tuple(i for i in ips if ":" in i)
    return HostAddresses(
        host=name,
        a=a(name, *v4),
        aaaa=a(
            name,
            *v6,
            rdtype="AAAA",
            outcome=DnsOutcome.ANSWER if v6 else DnsOutcome.NO_ANSWER,
        ),
    )


def srv(name: str, *records: SrvRecord, outcome: DnsOutcome | None = None) -> DnsResult:
    if outcome is None:
        outcome = DnsOutcome.ANSWER if records else DnsOutcome.NXDOMAIN
    return DnsResult(qname=name, rdtype="SRV", outcome=outcome, srv=records)


# -- server names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("example.com", ("example.com", None)),
        ("example.com:8448", ("example.com", 8448)),
        ("1.2.3.4:443", ("1.2.3.4", 443)),
        ("[::1]", ("[::1]", None)),
        ("[2001:db8::1]:8448", ("[2001:db8::1]", 8448)),
    ],
)
def test_parse_valid_server_names(name: str, expected: tuple[str, int | None]) -> None:
    assert parse_and_validate_server_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "exa mple.com",
        "https://example.com",
        "example.com:abc",
        "example.com:99999",
        "[::1",
        "[1.2.3.4]",
        "example.com/path",
        "a.com\n",
    ],
)
def test_parse_invalid_server_names(name: str) -> None:
    with pytest.raises(ValueError):
        parse_and_validate_server_name(name)


@given(st.text(max_size=60))
def test_parse_never_raises_anything_but_valueerror(name: str) -> None:
    try:
        parse_and_validate_server_name(name)
    except ValueError:
        pass


# -- well-known -------------------------------------------------------------------


def test_well_known_delegation_ok() -> None:
    outcome = interpret(
        http(
            body=b'{"m.server": "Matrix.Example.com:443"}',
            headers={"cache-control": ("max-age=3600",)},
        )
    )
    assert outcome.kind == WellKnownKind.DELEGATED
    assert outcome.delegated == "matrix.example.com:443"
    assert outcome.cache_lifetime_s == 3600
    result = check_well_known("example.com", outcome, fallback_works=False)
    assert result.status is Status.OK
    assert result.details["m.server"] == "matrix.example.com:443"
    for key in ("url", "host_header", "sni"):
        assert key in result.details


def test_well_known_wrong_content_type_warns() -> None:
    outcome = interpret(http(body=b'{"m.server": "m.example.com"}', ctype="text/plain"))
    result = check_well_known("example.com", outcome, fallback_works=True)
    assert result.status is Status.WARN
    assert "Content-Type" in (result.fix or "")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b"{}", 'no "m.server"'),
        (b'{"m.server": 42}', "not a string"),
        (b'{"m.server": "https://x.example.com/"}', "not a valid server name"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
def test_well_known_invalid_bodies_fail(body: bytes, problem: str) -> None:
    outcome = interpret(http(body=body))
    assert outcome.kind == WellKnownKind.INVALID
    assert problem in outcome.problem
    result = check_well_known("example.com", outcome, fallback_works=True)
    assert result.status is Status.FAIL
    assert result.details["reason"] == "invalid"


@given(st.binary(max_size=300))
def test_well_known_any_body_is_judged(body: bytes) -> None:
    outcome = interpret(http(body=body))
    check_well_known("example.com", outcome, fallback_works=False)


def test_missing_well_known_ok_only_when_fallback_works() -> None:
    outcome = interpret(http(status=404, ctype=None))
    assert (
        check_well_known("example.com", outcome, fallback_works=True).status
        is Status.OK
    )
    failed = check_well_known("example.com", outcome, fallback_works=False)
    assert failed.status is Status.FAIL
    assert "Publish" in (failed.fix or "")


def test_unreachable_well_known_is_like_absent() -> None:
    outcome = interpret(
        http(status=None, error="refused", error_message="connection refused")
    )
    assert outcome.kind == WellKnownKind.UNREACHABLE
    assert (
        check_well_known("example.com", outcome, fallback_works=True).status
        is Status.OK
    )


def test_non_200_warns_when_fallback_works() -> None:
    outcome = interpret(http(status=500))
    assert (
        check_well_known("example.com", outcome, fallback_works=True).status
        is Status.WARN
    )
    assert (
        check_well_known("example.com", outcome, fallback_works=False).status
        is Status.FAIL
    )


def test_tls_failure_fails_with_certificate_reason() -> None:
    outcome = interpret(
        http(
            status=None,
            error="certificate",
            error_message="expired",
            tls_reason="expired",
        )
    )
    result = check_well_known("example.com", outcome, fallback_works=True)
    assert result.status is Status.FAIL
    assert result.details["reason"] == "expired"
    assert "ignore" in result.summary


def test_timeout_fails_and_says_so() -> None:
    outcome = interpret(http(status=None, error="timeout", error_message="timed out"))
    result = check_well_known("example.com", outcome, fallback_works=True)
    assert result.status is Status.FAIL
    assert result.details["reason"] == "timeout"
    assert "timed out" in result.summary


@pytest.mark.parametrize("reason", ["redirect_loop", "redirect_scheme", "too_large"])
def test_fetch_failures_fail(reason: str) -> None:
    outcome = interpret(http(status=None, error=reason, error_message=reason))
    result = check_well_known("example.com", outcome, fallback_works=True)
    assert result.status is Status.FAIL
    assert result.details["reason"] == reason


def test_not_consulted() -> None:
    result = check_well_known(
        "example.com:8448",
        WellKnownOutcome(kind=WellKnownKind.NOT_CONSULTED),
        fallback_works=False,
        not_consulted_because="explicit port",
    )
    assert result.status is Status.OK


def test_cache_lifetime_rules() -> None:
    assert cache_lifetime(http(headers={"cache-control": ("no-store",)}), 0) == 0
    assert (
        cache_lifetime(http(headers={"cache-control": ("public, max-age=60",)}), 0)
        == 60
    )
    assert (
        cache_lifetime(http(headers={"expires": ("Thu, 01 Jan 1970 00:01:40 GMT",)}), 0)
        == 100
    )
    assert cache_lifetime(http(headers={"expires": ("0",)}), 0) == 0
    assert cache_lifetime(http(), 0) is None


def test_consistency() -> None:
    good = interpret(http(body=b'{"m.server": "m.example.com"}'))
    other = interpret(http(body=b'{"m.server": "old.example.com"}'))
    assert (
        check_well_known_consistency(
            "example.com", good, [("1.2.3.4:443", good), ("[2001:db8::1]:443", good)]
        ).status
        is Status.OK
    )
    result = check_well_known_consistency(
        "example.com", good, [("1.2.3.4:443", good), ("[2001:db8::1]:443", other)]
    )
    assert result.status is Status.WARN
    assert "old.example.com" in result.summary
    assert check_well_known_consistency("example.com", good, []).status is Status.SKIP


# -- SRV ----------------------------------------------------------------------------

FED = "_matrix-fed._tcp.example.com"
LEGACY = "_matrix._tcp.example.com"


def rec(
    target: str, port: int = 8448, priority: int = 10, weight: int = 5
) -> SrvRecord:
    return SrvRecord(priority=priority, weight=weight, port=port, target=target)


def test_srv_fed_records_used_and_sorted() -> None:
    decision = decide_srv(
        "example.com",
        srv(FED, rec("b.example.com", priority=20), rec("a.example.com", priority=10)),
        srv(LEGACY),
    )
    assert decision.kind == "fed"
    assert [r.target for r in decision.records] == ["a.example.com", "b.example.com"]
    assert check_srv(decision).status is Status.OK


def test_srv_servfail_does_not_fall_back() -> None:
    decision = decide_srv(
        "example.com",
        srv(FED, outcome=DnsOutcome.SERVFAIL),
        srv(LEGACY, rec("x.example.com")),
    )
    assert decision.kind == "failed"
    result = check_srv(decision)
    assert result.status is Status.FAIL
    assert result.details["reason"] == "servfail"


def test_srv_timeout_fails() -> None:
    decision = decide_srv(
        "example.com", srv(FED), srv(LEGACY, outcome=DnsOutcome.TIMEOUT)
    )
    result = check_srv(decision)
    assert result.status is Status.FAIL
    assert result.details["reason"] == "timeout"
    assert "timed out" in result.summary


def test_srv_legacy_only_warns() -> None:
    decision = decide_srv("example.com", srv(FED), srv(LEGACY, rec("m.example.com")))
    assert decision.kind == "legacy"
    assert check_srv(decision).status is Status.WARN


def test_srv_dot_target_is_unavailable() -> None:
    decision = decide_srv("example.com", srv(FED, rec(".")), None)
    assert decision.kind == "unavailable"
    assert check_srv(decision).status is Status.FAIL


def test_srv_cname_target_warns() -> None:
    decision = decide_srv(
        "example.com", srv(FED, rec("alias.example.com")), srv(LEGACY)
    )
    result = check_srv(
        decision, cname_targets=[("alias.example.com", "real.example.net")]
    )
    assert result.status is Status.WARN
    assert "CNAME" in result.summary


def test_srv_ignored_when_delegated() -> None:
    ignored = decide_srv("example.com", srv(FED, rec("old.example.com")), srv(LEGACY))
    result = check_srv(None, not_used_because="delegated with a port", ignored=ignored)
    assert result.status is Status.OK
    assert "ignored" in result.summary


# -- addresses and targets -------------------------------------------------------


def test_addresses_public_ok() -> None:
    assert (
        check_addresses([host("m.example.com", "203.0.113.7", "2001:db8::7")]).status
        is Status.OK
    )


def test_addresses_private_warns_with_both_readings() -> None:
    result = check_addresses([host("m.example.com", "192.168.1.5")])
    assert result.status is Status.WARN
    assert "split-horizon" in result.summary
    assert "ip_range_blacklist" in result.summary


@pytest.mark.parametrize(
    "ip",
    ["0.0.0.1", "169.254.1.1", "fe80::1", "224.0.0.1", "255.255.255.255", "ff02::1"],
)
def test_addresses_forbidden_fail(ip: str) -> None:
    result = check_addresses([host("m.example.com", "203.0.113.7", ip)])
    assert result.status is Status.FAIL
    assert ip in result.details["forbidden"]


def test_no_address_fails() -> None:
    result = check_addresses([host("m.example.com")])
    assert result.status is Status.FAIL
    assert result.details["reason"] == "no_address"


def test_partial_lookup_failure_warns() -> None:
    broken = HostAddresses(
        host="m.example.com",
        a=a("m.example.com", "203.0.113.7"),
        aaaa=DnsResult(
            qname="m.example.com", rdtype="AAAA", outcome=DnsOutcome.SERVFAIL
        ),
    )
    assert check_addresses([broken]).status is Status.WARN


def test_targets_informational() -> None:
    target = Target(
        ip="2001:db8::1",
        port=8448,
        host_header="example.com",
        sni="example.com",
        hostname="m.example.com",
        source="srv",
    )
    assert target.address == "[2001:db8::1]:8448"
    result = check_targets([target])
    assert result.status is Status.OK
    assert result.details["targets"][0]["address"] == "[2001:db8::1]:8448"
    assert check_targets([]).status is Status.OK


def test_details_are_json_serialisable() -> None:
    outcome = interpret(http(body=b'{"m.server": "m.example.com"}'))
    json.dumps(check_well_known("example.com", outcome, fallback_works=True).to_json())
    json.dumps(
        check_srv(
            decide_srv("example.com", srv(FED, rec("a.example.com")), srv(LEGACY))
        ).to_json()
    )
