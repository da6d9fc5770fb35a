"""Server discovery as the spec and Synapse define it: values and rules.

What a well-known answer means to a Synapse peer, which SRV records it uses,
and the addresses (`Target`s) it connects to, with the Host header and SNI
it sends. `Resolution` holds every observation and decision of one
discovery, interpreted once; the engine (`engine/resolution.py`) fills it and
the judges (`checks/discovery.py`, `checks/network_judge.py`) read it.

Pure: no I/O, no Twisted, no Synapse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attr

from synapse_fedhealth.matrix_names import parse_and_validate_server_name
from synapse_fedhealth.net.addresses import format_address
from synapse_fedhealth.net.results import (
    DnsOutcome,
    DnsResult,
    HttpResult,
    ProbeError,
    SrvRecord,
    StrEnum,
)

DEFAULT_FEDERATION_PORT = 8448
# Longer cache lifetimes are reported as this (10 years); Synapse caps at 48 h.
MAX_CACHE_LIFETIME_S = 10 * 365 * 24 * 3600
SRV_FED_PREFIX = "_matrix-fed._tcp."
SRV_LEGACY_PREFIX = "_matrix._tcp."


# ---------------------------------------------------------------------------
# The well-known


class WellKnownKind(StrEnum):
    """What a peer makes of the server name's /.well-known/matrix/server."""

    NOT_CONSULTED = "not_consulted"
    DELEGATED = "delegated"
    ABSENT = "absent"  # 404
    NON_200 = "non_200"
    INVALID = "invalid"
    UNREACHABLE = "unreachable"  # refused, unreachable, no address on port 443
    TLS = "tls"
    TIMEOUT = "timeout"
    FAILED = "failed"  # too large, redirect trouble, malformed HTTP, ...


class SrvKind(StrEnum):
    """Which SRV records a peer uses."""

    FED = "fed"  # _matrix-fed._tcp
    LEGACY = "legacy"  # only the deprecated _matrix._tcp
    NONE = "none"  # no records: port 8448 on the host itself
    FAILED = "failed"  # the lookup failed: Synapse gives up
    UNAVAILABLE = "unavailable"  # only "." targets: the service is declared absent


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class WellKnownOutcome:
    kind: WellKnownKind
    http: HttpResult | None = None
    m_server: Any = None  # the raw value, when there is one
    delegated: str | None = None  # the validated m.server
    problem: str = ""
    reason: str | None = None  # details.reason when this is a failure
    cache_lifetime_s: float | None = None

    @property
    def comparable(self) -> tuple[str, int | None, str | None]:
        return (self.kind, self.http.status if self.http else None, self.delegated)

    def describe(self) -> str:
        if self.kind == WellKnownKind.DELEGATED:
            return f"delegates to {self.delegated}"
        if self.kind == WellKnownKind.ABSENT:
            return "none (HTTP 404)"
        if self.kind == WellKnownKind.NON_200 and self.http is not None:
            return f"HTTP {self.http.status}"
        return self.problem or self.kind


def cache_lifetime(http: HttpResult, now: float) -> float | None:
    """Seconds peers cache the answer for, from Cache-Control/Expires
    (Synapse's `_cache_period_from_headers`); None: Synapse's default (24 h)."""
    directives: dict[str, str | None] = {}
    for value in http.headers.get("cache-control", ()):
        for directive in value.split(","):
            key, _, arg = directive.partition("=")
            directives[key.strip().lower()] = arg.strip() if arg else None
    if "no-store" in directives:
        return 0.0
    max_age = directives.get("max-age")
    if max_age:
        try:
            # Clamped: a hostile 400-digit max-age overflows a float.
            return float(min(int(max_age), MAX_CACHE_LIFETIME_S))
        except ValueError:
            pass
    expires = http.header("expires")
    if expires is not None:
        from email.utils import parsedate_to_datetime

        try:
            return parsedate_to_datetime(expires).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
    return None


def interpret_well_known(http: HttpResult, *, now: float) -> WellKnownOutcome:
    """What a Synapse peer makes of one /.well-known/matrix/server fetch;
    `now` (unix seconds) dates an `Expires` header."""
    if http.error is not None:
        return _failed_fetch(http)
    if http.status == 404:
        return WellKnownOutcome(kind=WellKnownKind.ABSENT, http=http)
    if http.status != 200:
        return WellKnownOutcome(
            kind=WellKnownKind.NON_200,
            http=http,
            problem=f"HTTP {http.status}",
            reason="http_status",
        )
    lifetime = cache_lifetime(http, now)
    try:
        parsed = json.loads(http.body.decode("utf-8"))
    except UnicodeDecodeError:
        return _invalid(http, "the body is not valid UTF-8", lifetime)
    except (ValueError, RecursionError):
        return _invalid(http, "the body is not valid JSON", lifetime)
    if not isinstance(parsed, dict):
        return _invalid(
            http,
            f"the body is JSON but not an object ({type(parsed).__name__})",
            lifetime,
        )
    if "m.server" not in parsed:
        return _invalid(http, 'the JSON object has no "m.server" key', lifetime)
    m_server = parsed["m.server"]
    if not isinstance(m_server, str):
        return _invalid(
            http,
            f'"m.server" is not a string: {clip(repr(m_server))}',
            lifetime,
            m_server,
        )
    try:
        parse_and_validate_server_name(m_server)
    except ValueError as e:
        return _invalid(
            http,
            f'"m.server" is not a valid server name: {clip(str(e))}',
            lifetime,
            m_server,
        )
    return WellKnownOutcome(
        kind=WellKnownKind.DELEGATED,
        http=http,
        m_server=m_server,
        delegated=m_server.lower(),
        cache_lifetime_s=lifetime,
    )


def _failed_fetch(http: HttpResult) -> WellKnownOutcome:
    """A fetch with no HTTP answer: why a peer has no well-known."""
    if http.error == ProbeError.TIMEOUT:
        return WellKnownOutcome(
            kind=WellKnownKind.TIMEOUT,
            http=http,
            problem="the request timed out",
            reason="timeout",
        )
    if http.error == ProbeError.CERTIFICATE:
        return WellKnownOutcome(
            kind=WellKnownKind.TLS,
            http=http,
            problem=http.error_message,
            reason=http.tls_reason,
        )
    if http.error == ProbeError.TLS:
        return WellKnownOutcome(
            kind=WellKnownKind.TLS,
            http=http,
            problem=http.error_message,
            reason="tls_handshake",
        )
    if http.error in (
        ProbeError.REFUSED,
        ProbeError.UNREACHABLE,
        ProbeError.NO_ADDRESS,
    ):
        return WellKnownOutcome(
            kind=WellKnownKind.UNREACHABLE,
            http=http,
            problem=http.error_message,
            reason=http.error,
        )
    return WellKnownOutcome(
        kind=WellKnownKind.FAILED,
        http=http,
        problem=http.error_message or str(http.error),
        reason=http.error,
    )


def _invalid(
    http: HttpResult, problem: str, lifetime: float | None, m_server: Any = None
) -> WellKnownOutcome:
    return WellKnownOutcome(
        kind=WellKnownKind.INVALID,
        http=http,
        problem=problem,
        reason="invalid",
        cache_lifetime_s=lifetime,
        m_server=m_server,
    )


def clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# ---------------------------------------------------------------------------
# SRV


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class SrvDecision:
    """Which SRV records Synapse uses for `name`."""

    name: str
    fed: DnsResult
    legacy: DnsResult | None
    kind: SrvKind
    records: tuple[SrvRecord, ...] = ()
    failed: DnsResult | None = None  # the lookup that failed, when kind == failed


def sort_srv(records: Sequence[SrvRecord]) -> tuple[SrvRecord, ...]:
    """Priority ascending, then heavier weight first (Synapse shuffles by
    weight; we show the likeliest order, deterministically)."""
    return tuple(
        sorted(records, key=lambda r: (r.priority, -r.weight, r.target, r.port))
    )


def decide_srv(name: str, fed: DnsResult, legacy: DnsResult | None) -> SrvDecision:
    """Synapse: `_matrix-fed._tcp`, then `_matrix._tcp`; a lookup that fails
    (SERVFAIL, timeout) is not a "no record": Synapse stops there."""
    for result in (fed, legacy):
        if result is None:
            break
        if result.outcome in (
            DnsOutcome.SERVFAIL,
            DnsOutcome.TIMEOUT,
            DnsOutcome.ERROR,
        ):
            return SrvDecision(
                name=name, fed=fed, legacy=legacy, kind=SrvKind.FAILED, failed=result
            )
        if result.srv:
            records = sort_srv(result.srv)
            # One "." record declares the service unavailable (RFC 2782); only
            # "." records leave nothing to connect to, which is the same.
            if all(r.target == "." for r in records):
                return SrvDecision(
                    name=name,
                    fed=fed,
                    legacy=legacy,
                    kind=SrvKind.UNAVAILABLE,
                    records=records,
                )
            usable = tuple(r for r in records if r.target != ".")
            return SrvDecision(
                name=name,
                fed=fed,
                legacy=legacy,
                kind=SrvKind.FED if result is fed else SrvKind.LEGACY,
                records=usable,
            )
    return SrvDecision(name=name, fed=fed, legacy=legacy, kind=SrvKind.NONE)


# ---------------------------------------------------------------------------
# Addresses and targets


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class HostAddresses:
    host: str
    a: DnsResult
    aaaa: DnsResult

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.a.addresses + self.aaaa.addresses

    @property
    def cnames(self) -> tuple[tuple[str, str], ...]:
        seen = dict.fromkeys(self.a.cnames + self.aaaa.cnames)
        return tuple(seen)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Target:
    """One address peers connect to, with the names they use on it."""

    ip: str
    port: int
    host_header: str
    sni: str  # also the name the certificate must cover
    hostname: str  # the host this address came from
    source: str  # how it was found, e.g. "srv _matrix-fed._tcp.example.com"

    @property
    def address(self) -> str:
        return format_address(self.ip, self.port)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "host_header": self.host_header,
            "sni": self.sni,
            "hostname": self.hostname,
            "source": self.source,
        }


# ---------------------------------------------------------------------------
# One discovery, whole


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Resolution:
    """Everything one discovery of `server_name` observed and decided.

    Built by `engine.resolution.ServerNameResolver`; a discovery cut short by
    its deadline is still a `Resolution`, with `complete` false and the parts
    that never arrived left at None.
    """

    server_name: str
    # The grammar error, when the name is not a server name (nothing else ran).
    invalid_name: str = ""
    # False for IP literals and names with a port: the spec skips the
    # well-known then.
    well_known_consulted: bool = False
    # Why SRV was not used (an IP literal, an explicit port, here or in the
    # delegation); "" when it was.
    srv_not_used_because: str = ""
    # The server name's well-known (None: not consulted, or still pending).
    well_known: WellKnownOutcome | None = None
    # The well-known fetched from each address of the server name (None: it
    # did not finish).
    well_known_by_address: tuple[tuple[str, WellKnownOutcome], ...] | None = None
    # The server name's own SRV records: ignored when the well-known delegates.
    name_srv: SrvDecision | None = None
    delegated: str | None = None  # the validated m.server
    srv: SrvDecision | None = None  # the records peers use, when SRV applies
    hosts: tuple[HostAddresses, ...] = ()
    literal_targets: tuple[str, ...] = ()
    targets: tuple[Target, ...] = ()
    targets_truncated: bool = False
    # SOA lookups of the zones above a host that has no address (its parent
    # domain and its TLD), asked only then: they tell a missing record from a
    # host whose resolver sees no public DNS at all.
    parent_zones: tuple[DnsResult, ...] = ()
    complete: bool = False
    # A bug of ours stopped discovery early ("" normally).
    error: str = ""

    @property
    def ignored_srv(self) -> SrvDecision | None:
        """The server name's SRV records when the well-known delegates."""
        return self.name_srv if self.delegated is not None else None
