"""Property tests for every parser of remote input (SPEC 5: "every remote
input is hostile until parsed"): server names, well-known bodies, key
answers and DNS answers (SRV, A/AAAA).

Each property says more than "does not raise": results are consistent with
the input, bounded, and render as strict JSON (no NaN, any depth) the way
the admin endpoint renders them. Run with `HYPOTHESIS_PROFILE=ci` for 10,000
examples each (tests/conftest.py).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import event, given
from hypothesis import strategies as st
from synapse.util.stringutils import (
    parse_and_validate_server_name as synapse_parse_server_name,
)

from synapse_fedhealth.checks.discovery import (
    Target,
    check_srv,
    check_well_known,
)
from synapse_fedhealth.checks.federation import check_keys
from synapse_fedhealth.matrix_names import (
    VALID_HOST_REGEX,
    parse_and_validate_server_name,
)
from synapse_fedhealth.net.dns import (
    MAX_CNAMES_KEPT,
    MAX_RECORDS_PER_ANSWER,
    DnsOutcome,
    DnsResult,
    result_from_response,
)
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.report import CheckResult, Status
from synapse_fedhealth.server_discovery import (
    WellKnownKind,
    decide_srv,
    interpret_well_known,
)
from synapse_fedhealth.signing import MAX_REPORTED_DEPTH, canonical_json
from tests.hypothesis_settings import REMOTE_INPUT_SETTINGS


def strict_json(value: Any) -> str:
    """Renders as the endpoint does (indent) and as strict JSON (no NaN)."""
    json.dumps(value, indent=2)
    return json.dumps(value, allow_nan=False)


def assert_renders(check: CheckResult) -> None:
    assert check.status in (Status.OK, Status.WARN, Status.FAIL, Status.SKIP)
    assert check.summary
    if check.status in (Status.WARN, Status.FAIL):
        assert check.fix
    strict_json(check.to_json())


# ---------------------------------------------------------------------------
# Server names


HOST_CHARS = "abcXYZ019-"
label = st.text(alphabet=HOST_CHARS, min_size=1, max_size=12)
hostnames = st.lists(label, min_size=1, max_size=4).map(".".join)
ports = st.one_of(
    st.integers(min_value=0, max_value=70000).map(str),
    st.text(alphabet="0123456789", min_size=1, max_size=7),
    st.sampled_from(["", "-1", "+80", "８０", "0x50", " 80"]),
)
ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
ipv4 = st.ip_addresses(v=4).map(str)
near_valid_hosts = st.one_of(
    hostnames,
    ipv6,
    ipv4,
    st.sampled_from(
        ["[::1", "::1]", "[1.2.3.4]", "[]", "[:::]", "[::[]", "[::1%lo]", "a..b", ".a"]
    ),
)
server_names = st.one_of(
    st.text(max_size=40),
    near_valid_hosts,
    st.tuples(near_valid_hosts, ports).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(near_valid_hosts, st.text(max_size=2), st.text(max_size=2)).map(
        lambda t: t[1] + t[0] + t[2]
    ),
)


@REMOTE_INPUT_SETTINGS
@given(server_names)
def test_server_name_parser_agrees_with_synapse(name: str) -> None:
    """We accept what Synapse accepts, split the same way, except ports that
    are not plain 1-5 ASCII digits in 1-65535 (the spec's grammar): Synapse's
    parser lets "+1", " 80" or 70000 through; no connection can use them."""
    try:
        ours: tuple[str, int | None] | None = parse_and_validate_server_name(name)
    except ValueError:
        ours = None
    try:
        theirs: tuple[str, int | None] | None = synapse_parse_server_name(name)
    except ValueError:
        theirs = None
    if ours is None and theirs is not None:
        port_text = name.rpartition(":")[2]
        assert theirs[1] is not None, (name, theirs)
        assert not (
            port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536
        ), (name, theirs)
        return
    assert ours == theirs, (name, ours, theirs)
    if ours is None:
        return
    host, port = ours
    # Splitting loses nothing: the name is host, then ":digits" for the port.
    assert name.startswith(host)
    rest = name[len(host) :]
    assert (rest == "") == (port is None)
    if port is not None:
        assert rest[0] == ":" and int(rest[1:]) == port and 0 < port < 65536
    if host.startswith("["):
        assert host.endswith("]") and ":" in host
    else:
        assert VALID_HOST_REGEX.match(host)


# ---------------------------------------------------------------------------
# JSON of any shape (including what json.loads accepts beyond RFC 8259)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


# Pathological JSON texts: a fixed set (their size, not randomness, is the point).
hostile_json_texts = st.sampled_from(
    [
        nested(5),
        nested(400),  # within json's recursion limit
        nested(990),  # at its edge
        nested(3000),  # beyond it
        "9" * 4300,  # the most digits int() parses
        "9" * 4301,  # one more: ValueError
        "1e" + "9" * 400,  # inf
        "-1e400",
        "NaN",
        "Infinity",
        "-Infinity",
        "-0",
        '"\\ud800"',  # a lone surrogate
    ]
)


# ---------------------------------------------------------------------------
# Well-known bodies


def wk_http(body: bytes, status: int = 200, **headers: str) -> HttpResult:
    return HttpResult(
        url="https://example.com/.well-known/matrix/server",
        host_header="example.com",
        sni="example.com",
        status=status,
        headers={k.replace("_", "-"): (v,) for k, v in headers.items()},
        body=body,
    )


m_server_values = st.one_of(
    server_names,
    json_values,
    hostile_json_texts.map(lambda t: json.loads(t) if len(t) < 900 else t),
)
wk_objects = st.one_of(
    st.builds(lambda v: {"m.server": v}, m_server_values),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    json_values,
)


def encode_any(value: Any) -> bytes:
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{}"


wk_bodies = st.one_of(
    st.binary(max_size=200),
    wk_objects.map(encode_any),
    hostile_json_texts.map(lambda t: ('{"m.server": ' + t + "}").encode()),
    st.tuples(server_names, server_names).map(
        # Duplicate keys: json.loads (like Synapse) keeps the last.
        lambda t: (
            f'{{"m.server": {json.dumps(t[0])}, "m.server": {json.dumps(t[1])}}}'.encode()
        )
    ),
)
header_texts = st.one_of(
    st.text(max_size=30),
    st.integers(0, 10**20).map(lambda n: f"max-age={n}"),
    st.integers(300, 500).map(lambda n: "max-age=" + "9" * n),  # overflows a float
    st.sampled_from(["no-store", "max-age=-1", "max-age=1e9", "private, max-age=60"]),
)


@REMOTE_INPUT_SETTINGS
@given(
    wk_bodies,
    st.sampled_from([200, 200, 200, 404, 500, 302]),
    header_texts,
    header_texts,
    st.one_of(st.none(), st.text(max_size=30), st.just("application/json")),
    st.booleans(),
)
def test_well_known_bodies(
    body: bytes,
    status: int,
    cache_control: str,
    expires: str,
    content_type: str | None,
    fallback_works: bool,
) -> None:
    headers = {"cache_control": cache_control, "expires": expires}
    if content_type is not None:
        headers["content_type"] = content_type
    http = wk_http(body, status, **headers)
    outcome = interpret_well_known(http, now=1.7e9)
    check = check_well_known("example.com", outcome, fallback_works=fallback_works)
    assert_renders(check)
    if outcome.cache_lifetime_s is not None:
        assert not math.isnan(outcome.cache_lifetime_s)

    # Delegated exactly when Synapse would take the delegation.
    expected: str | None = None
    if status == 200:
        try:
            parsed = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            parsed = None
        m_server = parsed.get("m.server") if isinstance(parsed, dict) else None
        if isinstance(m_server, str):
            try:
                synapse_parse_server_name(m_server)
                parse_and_validate_server_name(m_server)
                expected = m_server.lower()
            except ValueError:
                expected = None
    assert outcome.delegated == expected
    assert (outcome.kind == WellKnownKind.DELEGATED) == (expected is not None)
    if expected is None and status == 200:
        assert check.status is Status.FAIL
        assert check.details["reason"] == "invalid"


# ---------------------------------------------------------------------------
# Key answers

KEY = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
KEY_B64 = (
    base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    .decode()
    .rstrip("=")
)
SERVER = "example.com"
NOW_MS = 1_700_000_000_000
TARGET = Target(
    ip="192.0.2.1",
    port=8448,
    host_header=SERVER,
    sni=SERVER,
    hostname=SERVER,
    source="test",
)


def sign(body: dict[str, Any], key_id: str) -> dict[str, Any]:
    try:
        message = canonical_json(
            {k: v for k, v in body.items() if k not in ("signatures", "unsigned")}
        )
    except (ValueError, TypeError, RecursionError):
        return body
    signature = base64.b64encode(KEY.sign(message)).decode().rstrip("=")
    name = body.get("server_name")
    if isinstance(name, str):
        body["signatures"] = {name: {key_id: signature}}
    return body


valid_until = st.one_of(
    st.integers(min_value=NOW_MS - 10**9, max_value=NOW_MS + 10**10),
    st.sampled_from([10**4000, -(10**4000), 2**63, 2**53 + 1, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    json_values,
)
key_ids = st.one_of(
    st.just("ed25519:a_AbCd"),
    st.text(max_size=12).map(lambda t: "ed25519:" + t),
    st.text(max_size=12),
)
verify_keys = st.one_of(
    key_ids.map(lambda k: {k: {"key": KEY_B64}}),
    st.dictionaries(key_ids, json_values, max_size=3),
    json_values,
)


@st.composite
def key_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(min_value=0, max_value=4))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return encode_any(draw(json_values))
    if kind == 2:
        text = draw(hostile_json_texts)
        return f'{{"server_name": "{SERVER}", "valid_until_ts": {text}}}'.encode()
    body: dict[str, Any] = {
        "server_name": draw(st.one_of(st.just(SERVER), server_names, json_values)),
        "valid_until_ts": draw(valid_until),
        "verify_keys": draw(verify_keys),
        "old_verify_keys": draw(st.one_of(st.just({}), json_values)),
    }
    if draw(st.booleans()):
        body["extra"] = json.loads(nested(draw(st.integers(0, 200)), "{}"))
    verify = body["verify_keys"]
    key_id = next(iter(verify), "ed25519:a_AbCd") if isinstance(verify, dict) else "x"
    if kind == 4 and isinstance(key_id, str):
        body = sign(body, key_id)
    else:
        body["signatures"] = draw(json_values)
    return encode_any(body)


@REMOTE_INPUT_SETTINGS
@given(
    key_bodies(),
    st.one_of(st.just("application/json"), st.text(max_size=20)),
)
def test_key_answers(body: bytes, content_type: str) -> None:
    http = HttpResult(
        url=f"https://{SERVER}/_matrix/key/v2/server",
        host_header=SERVER,
        sni=SERVER,
        status=200,
        headers={"content-type": (content_type,)},
        body=body,
    )
    check, served = check_keys(TARGET, http, SERVER, now_ms=NOW_MS)
    assert_renders(check)
    assert check.status in (Status.OK, Status.WARN, Status.FAIL)
    if served is not None:
        # What the federation tester view shows renders strictly, at any depth.
        strict_json(served.federation_tester_checks(SERVER, NOW_MS))
        strict_json(dict(served.raw))
        assert _depth(served.raw) <= MAX_REPORTED_DEPTH + 1
    if check.status is not Status.FAIL:
        assert served is not None
        assert served.server_name == SERVER
        assert served.key_checks
        assert all(k.valid_key and k.signature_ok for k in served.key_checks)
        assert served.valid_until_ts is not None and served.valid_until_ts > NOW_MS


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


# ---------------------------------------------------------------------------
# DNS answers

TARGET_NAMES = (".", "a.example.com.", "B.Example.COM.", "_x._tcp.c.", "d-1.e.", "x.")
dns_targets = st.sampled_from(TARGET_NAMES)
QNAME = "_matrix-fed._tcp.example.com"


def _rdata(kind: str, value: Any) -> Any:
    if kind == "SRV":
        priority, weight, port, target = value
        return dns.rdtypes.IN.SRV.SRV(
            dns.rdataclass.IN,
            dns.rdatatype.SRV,
            priority,
            weight,
            port,
            dns.name.from_text(target),
        )
    if kind == "CNAME":
        return dns.rdtypes.ANY.CNAME.CNAME(
            dns.rdataclass.IN, dns.rdatatype.CNAME, dns.name.from_text(value)
        )
    if kind == "A":
        return dns.rdtypes.IN.A.A(dns.rdataclass.IN, dns.rdatatype.A, str(value))
    return dns.rdtypes.IN.AAAA.AAAA(dns.rdataclass.IN, dns.rdatatype.AAAA, str(value))


# One draw per record (generation, not the code under test, dominates).
_values = {
    "SRV": st.integers(0, 2**51 - 1).map(
        lambda n: (
            n & 0xFFFF,
            (n >> 16) & 0xFFFF,
            (n >> 32) & 0xFFFF,
            TARGET_NAMES[(n >> 48) % len(TARGET_NAMES)],
        )
    ),
    "CNAME": dns_targets,
    "A": st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    "AAAA": st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
}


# (kind, owner, values) per rrset; messages are built in the test itself.
RRsetSpec = tuple[str, str, list[Any]]
rrset_specs = st.sampled_from(["SRV", "SRV", "CNAME", "A", "AAAA"]).flatmap(
    lambda kind: st.tuples(
        st.just(kind),
        st.one_of(st.just(QNAME + "."), dns_targets),
        st.lists(_values[kind], min_size=1, max_size=24),
    )
)


def build_response(
    msg_id: int, qtype: str, specs: list[RRsetSpec], through_wire: bool
) -> dns.message.Message:
    response = dns.message.Message(id=msg_id)
    response.flags = dns.flags.QR | dns.flags.RD | dns.flags.RA
    response.question = [
        dns.rrset.RRset(
            dns.name.from_text(QNAME + "."),
            dns.rdataclass.IN,
            dns.rdatatype.from_text(qtype),
        )
    ]
    for kind, owner, values in specs:
        response.answer.append(
            dns.rrset.from_rdata_list(
                dns.name.from_text(owner), 60, [_rdata(kind, v) for v in values]
            )
        )
    if through_wire:
        # As the resolver sees it: through the wire format.
        response = dns.message.from_wire(response.to_wire())
    return response


@REMOTE_INPUT_SETTINGS
@given(
    st.integers(0, 65535),
    st.sampled_from(["SRV", "A", "AAAA"]),
    st.lists(rrset_specs, max_size=3),
    st.booleans(),
    st.sampled_from(["SRV", "A", "AAAA"]),
)
def test_dns_answers(
    msg_id: int,
    qtype: str,
    specs: list[RRsetSpec],
    through_wire: bool,
    rdtype: str,
) -> None:
    response = build_response(msg_id, qtype, specs, through_wire)
    result = result_from_response(QNAME, rdtype, response)
    total = sum(len(rrset) for rrset in response.answer)
    assert len(result.srv) + len(result.addresses) <= MAX_RECORDS_PER_ANSWER
    assert result.truncated == (total > MAX_RECORDS_PER_ANSWER)
    assert result.outcome in (DnsOutcome.ANSWER, DnsOutcome.NO_ANSWER)
    assert (result.outcome is DnsOutcome.ANSWER) == bool(result.srv or result.addresses)
    for record in result.srv:
        assert record.target == "." or (
            record.target == record.target.lower() and not record.target.endswith(".")
        )
        assert 0 <= record.port < 65536
    if rdtype != "SRV":
        assert not result.srv
    strict_json(result.to_json())

    # What discovery makes of it, as the fed lookup and as the legacy one.
    legacy = DnsResult(qname=QNAME, rdtype="SRV", outcome=DnsOutcome.NXDOMAIN)
    for fed, leg in ((result, legacy), (legacy, result)):
        decision = decide_srv("example.com", fed, leg)
        if decision.kind in ("fed", "legacy"):
            assert decision.records
            assert all(r.target != "." for r in decision.records)
        assert_renders(check_srv(decision))


# DNS answers as wire bytes: real responses, then damaged the way a broken
# server, a middlebox or an attacker damages them.

WIRE_RDTYPES = ("SRV", "A", "AAAA")
CHAIN_NAMES = ("matrix.example.com.", "lb.Example.NET.", "x.", QNAME + ".")
# TTLs at the edges of the 32-bit field (RFC 2181 8: a set top bit means 0).
ODD_TTLS = st.sampled_from([0, 1, 59, 86_400, 2**31 - 1, 2**31, 2**32 - 1])
RCODES = st.sampled_from(
    [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL]
)
# Edge values for 16-bit fields: counts, types (A, CNAME, AAAA, SRV, OPT, ANY),
# classes (IN, CH), lengths and compression pointers.
EDGE_U16 = st.sampled_from([0, 1, 3, 5, 28, 33, 41, 255, 0x7FFF, 0xC00C, 0xFFFF])
WIRE_DAMAGES = ("flip", "truncate", "insert", "splice", "edge_u16")
# A name is at most 255 octets; as text each octet takes at most 4 characters
# (`\DDD`), and JSON escapes the backslash: 5 characters per octet.
NAME_JSON_CHARS = 255 * 5
MAX_RESULT_JSON_CHARS = (
    MAX_RECORDS_PER_ANSWER * (NAME_JSON_CHARS + 80)
    + MAX_CNAMES_KEPT * (2 * NAME_JSON_CHARS + 10)
    + 200
)


# Record values come from one draw of bytes per rrset (a draw per record made
# generation, not the code under test, take most of the time).
RECORD_BYTES = {"A": 4, "AAAA": 16, "SRV": 7, "CNAME": 1}
MAX_RRSET_RECORDS = 40  # more than MAX_RECORDS_PER_ANSWER


def _values_from_bytes(kind: str, blob: bytes) -> list[Any]:
    size = RECORD_BYTES[kind]
    chunks = [blob[i : i + size] for i in range(0, len(blob) - size + 1, size)]
    if kind == "A":
        return [ipaddress.IPv4Address(chunk) for chunk in chunks]
    if kind == "AAAA":
        return [ipaddress.IPv6Address(chunk) for chunk in chunks]
    if kind == "SRV":
        return [
            (
                int.from_bytes(chunk[0:2], "big"),
                int.from_bytes(chunk[2:4], "big"),
                int.from_bytes(chunk[4:6], "big"),
                TARGET_NAMES[chunk[6] % len(TARGET_NAMES)],
            )
            for chunk in chunks
        ]
    return [TARGET_NAMES[chunk[0] % len(TARGET_NAMES)] for chunk in chunks]


@st.composite
def dns_response_wire(draw: st.DrawFn) -> bytes:
    """A well-formed response to QNAME as a server sends it: a CNAME chain
    (loops included) from QNAME, then rrsets of every kind, mostly at the
    chain's end, with odd TTLs, any of the rcodes, maybe glue and EDNS."""
    response = dns.message.Message(id=draw(st.integers(0, 65535)))
    response.flags = (
        dns.flags.QR
        | dns.flags.RD
        | dns.flags.RA
        | draw(st.sampled_from([0, dns.flags.AA, dns.flags.TC]))
    )
    response.set_rcode(draw(RCODES))
    response.question = [
        dns.rrset.RRset(
            dns.name.from_text(QNAME + "."),
            dns.rdataclass.IN,
            dns.rdatatype.from_text(draw(st.sampled_from(WIRE_RDTYPES))),
        )
    ]
    owner = QNAME + "."
    for _ in range(draw(st.integers(0, 4))):
        alias = draw(st.sampled_from(CHAIN_NAMES))
        response.answer.append(
            dns.rrset.from_rdata_list(
                dns.name.from_text(owner), draw(ODD_TTLS), [_rdata("CNAME", alias)]
            )
        )
        owner = alias
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["SRV", "SRV", "A", "AAAA", "CNAME"]))
        size = RECORD_BYTES[kind] * draw(st.integers(1, MAX_RRSET_RECORDS))
        values = _values_from_bytes(kind, draw(st.binary(min_size=size, max_size=size)))
        response.answer.append(
            dns.rrset.from_rdata_list(
                dns.name.from_text(draw(st.one_of(st.just(owner), dns_targets))),
                draw(ODD_TTLS),
                [_rdata(kind, v) for v in values],
            )
        )
    if draw(st.booleans()):
        response.additional.append(
            dns.rrset.from_rdata_list(
                dns.name.from_text(draw(dns_targets)),
                draw(ODD_TTLS),
                [
                    _rdata(
                        "A",
                        ipaddress.IPv4Address(draw(st.binary(min_size=4, max_size=4))),
                    )
                ],
            )
        )
    if draw(st.booleans()):
        response.use_edns(0, payload=draw(st.sampled_from([512, 1232, 4096])))
    # No shuffle: record order comes from hypothesis, not from `random`. No
    # size limit from the EDNS payload: servers send what they send.
    wire: bytes = response.to_wire(max_size=65535, want_shuffle=False)
    return wire


@st.composite
def damaged_dns_wire(draw: st.DrawFn) -> bytes:
    """A real response with up to three damages: a flipped bit, truncation,
    inserted bytes, the tail of another response spliced in, or a 16-bit
    field overwritten with an edge value. With none, the response itself."""
    wire = bytearray(draw(dns_response_wire()))
    for damage in draw(st.lists(st.sampled_from(WIRE_DAMAGES), max_size=3)):
        if not wire:
            break
        at = draw(st.integers(0, len(wire) - 1))
        if damage == "flip":
            wire[at] ^= 1 << draw(st.integers(0, 7))
        elif damage == "truncate":
            del wire[at:]
        elif damage == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif damage == "splice":
            other = draw(dns_response_wire())
            wire[at:] = other[draw(st.integers(0, len(other))) :]
        elif len(wire) >= 2:
            at = min(at, len(wire) - 2)
            wire[at : at + 2] = draw(EDGE_U16).to_bytes(2, "big")
    return bytes(wire)


@REMOTE_INPUT_SETTINGS
@given(damaged_dns_wire(), st.sampled_from(WIRE_RDTYPES))
def test_dns_wire_bytes(wire: bytes, rdtype: str) -> None:
    """Bytes from a DNS server: dnspython refuses them (the resolver turns
    that into an `error` outcome), or the message it parsed becomes a result
    that is bounded whatever the message holds, and renders as strict JSON;
    never an exception of ours."""
    try:
        message = dns.message.from_wire(wire)
    except Exception as e:
        event(f"dnspython refuses the bytes: {type(e).__name__}")
        return
    event("parsed: reaches result_from_response")
    result = result_from_response(QNAME, rdtype, message)

    # Records of another class than IN are skipped, and not counted.
    served = sum(
        len(rrset) for rrset in message.answer if rrset.rdclass == dns.rdataclass.IN
    )
    assert result.truncated == (served > MAX_RECORDS_PER_ANSWER)
    assert len(result.addresses) + len(result.srv) <= MAX_RECORDS_PER_ANSWER
    assert len(result.cnames) <= MAX_CNAMES_KEPT
    assert result.outcome is (
        DnsOutcome.ANSWER if result.addresses or result.srv else DnsOutcome.NO_ANSWER
    )
    if rdtype == "SRV":
        assert not result.addresses
    else:
        assert not result.srv
        version = 4 if rdtype == "A" else 6
        assert all(ipaddress.ip_address(a).version == version for a in result.addresses)
    for record in result.srv:
        assert 0 <= record.port < 65536
        assert record.target == "." or (
            record.target == record.target.lower() and not record.target.endswith(".")
        )
    assert len(strict_json(result.to_json())) <= MAX_RESULT_JSON_CHARS

    if rdtype == "SRV":
        legacy = DnsResult(qname=QNAME, rdtype="SRV", outcome=DnsOutcome.NXDOMAIN)
        assert_renders(check_srv(decide_srv("example.com", result, legacy)))


# A CH-class SRV rrset in the answer section, as a hostile server may send
# next to (or instead of) the IN records: dnspython parses its rdata as
# GenericRdata, which has no `priority`.
OTHER_CLASS_SRV_WIRE = (
    b"\x00\x00\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    b"\x0b_matrix-fed\x04_tcp\x07example\x03com\x00\x00\x21\x00\x01"
    b"\xc0\x0c\x00\x21\x00\x03\x00\x00\x00\x00\x00\x07"
    b"\x00\x00\x00\x00\x00\x00\x00"
)


def test_dns_answer_of_another_class() -> None:
    """Records of another class reuse SRV/A/AAAA type numbers with other
    fields; they were read as if IN and raised AttributeError."""
    message = dns.message.from_wire(OTHER_CLASS_SRV_WIRE)
    assert message.answer[0].rdclass == dns.rdataclass.CH
    result = result_from_response(QNAME, "SRV", message)
    assert result.outcome is DnsOutcome.NO_ANSWER
