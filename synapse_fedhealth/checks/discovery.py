"""Server discovery checks (SPEC 4.2): well-known, SRV, addresses, targets.

Pure logic: the orchestrator (`synapse_fedhealth.network`) does the I/O and
hands the observations in. Semantics follow the server-server spec v1.19
"Resolving server names" and Synapse's own client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import attr

from synapse_fedhealth.matrix_names import VALID_HOST_REGEX as VALID_HOST_REGEX
from synapse_fedhealth.matrix_names import bare_host as bare_host
from synapse_fedhealth.matrix_names import (
    parse_and_validate_server_name as parse_and_validate_server_name,
)
from synapse_fedhealth.net.addresses import (
    AddressClass,
    classify_address,
    format_address,
)
from synapse_fedhealth.net.dns import DnsOutcome, DnsResult, SrvRecord
from synapse_fedhealth.net.http import (
    ERR_CERTIFICATE,
    ERR_NO_ADDRESS,
    ERR_REFUSED,
    ERR_TIMEOUT,
    ERR_TLS,
    ERR_UNREACHABLE,
    HttpResult,
)
from synapse_fedhealth.report import CheckResult, fail, ok, skip, warn

WELL_KNOWN = "discovery.well_known"
WELL_KNOWN_CONSISTENCY = "discovery.well_known_consistency"
SRV = "discovery.srv"
ADDRESSES = "discovery.addresses"
TARGETS = "discovery.targets"

DEFAULT_FEDERATION_PORT = 8448
# Longer cache lifetimes are reported as this (10 years); Synapse caps at 48 h.
MAX_CACHE_LIFETIME_S = 10 * 365 * 24 * 3600
SRV_FED_PREFIX = "_matrix-fed._tcp."
SRV_LEGACY_PREFIX = "_matrix._tcp."

# ---------------------------------------------------------------------------
# Well-known


WK_NOT_CONSULTED = "not_consulted"
WK_DELEGATED = "delegated"
WK_ABSENT = "absent"  # 404
WK_NON_200 = "non_200"
WK_INVALID = "invalid"
WK_UNREACHABLE = "unreachable"  # refused, unreachable, no address on port 443
WK_TLS = "tls"
WK_TIMEOUT = "timeout"
WK_FAILED = "failed"  # too large, redirect trouble, malformed HTTP, ...


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class WellKnownOutcome:
    kind: str
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
        if self.kind == WK_DELEGATED:
            return f"delegates to {self.delegated}"
        if self.kind == WK_ABSENT:
            return "none (HTTP 404)"
        if self.kind == WK_NON_200 and self.http is not None:
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


def interpret_well_known(
    http: HttpResult, *, now: float | None = None
) -> WellKnownOutcome:
    """What a Synapse peer makes of one /.well-known/matrix/server fetch."""
    if now is None:
        now = time.time()
    if http.error is not None:
        if http.error == ERR_TIMEOUT:
            return WellKnownOutcome(
                kind=WK_TIMEOUT,
                http=http,
                problem="the request timed out",
                reason="timeout",
            )
        if http.error == ERR_CERTIFICATE:
            return WellKnownOutcome(
                kind=WK_TLS,
                http=http,
                problem=http.error_message,
                reason=http.tls_reason,
            )
        if http.error == ERR_TLS:
            return WellKnownOutcome(
                kind=WK_TLS,
                http=http,
                problem=http.error_message,
                reason="tls_handshake",
            )
        if http.error in (ERR_REFUSED, ERR_UNREACHABLE, ERR_NO_ADDRESS):
            return WellKnownOutcome(
                kind=WK_UNREACHABLE,
                http=http,
                problem=http.error_message,
                reason=http.error,
            )
        return WellKnownOutcome(
            kind=WK_FAILED,
            http=http,
            problem=http.error_message or http.error,
            reason=http.error,
        )
    if http.status == 404:
        return WellKnownOutcome(kind=WK_ABSENT, http=http)
    if http.status != 200:
        return WellKnownOutcome(
            kind=WK_NON_200,
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
            f'"m.server" is not a string: {_clip(repr(m_server))}',
            lifetime,
            m_server,
        )
    try:
        parse_and_validate_server_name(m_server)
    except ValueError as e:
        return _invalid(
            http,
            f'"m.server" is not a valid server name: {_clip(str(e))}',
            lifetime,
            m_server,
        )
    return WellKnownOutcome(
        kind=WK_DELEGATED,
        http=http,
        m_server=m_server,
        delegated=m_server.lower(),
        cache_lifetime_s=lifetime,
    )


def _invalid(
    http: HttpResult, problem: str, lifetime: float | None, m_server: Any = None
) -> WellKnownOutcome:
    return WellKnownOutcome(
        kind=WK_INVALID,
        http=http,
        problem=problem,
        reason="invalid",
        cache_lifetime_s=lifetime,
        m_server=m_server,
    )


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _wk_details(outcome: WellKnownOutcome) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if outcome.http is not None:
        details.update(outcome.http.request_details())
        if outcome.http.content_type is not None:
            details["content_type"] = outcome.http.content_type
    if outcome.kind == WK_DELEGATED:
        details["m.server"] = outcome.delegated
    elif isinstance(outcome.m_server, str):
        details["m.server"] = _clip(outcome.m_server)
    if outcome.cache_lifetime_s is not None:
        details["cache_lifetime_s"] = outcome.cache_lifetime_s
    if outcome.reason is not None:
        details["reason"] = outcome.reason
    if outcome.problem:
        details["problem"] = outcome.problem
    return details


_FIX_PUBLISH = (
    "Publish https://{name}/.well-known/matrix/server with "
    '{{"m.server": "<federation host>:<port>"}} (Synapse can serve it itself with '
    "`serve_server_wellknown: true`), or make the fallback work: an SRV record "
    "_matrix-fed._tcp.{name} or port 8448 on {name}'s addresses."
)


def check_well_known(
    server_name: str,
    outcome: WellKnownOutcome,
    *,
    fallback_works: bool,
    not_consulted_because: str = "",
) -> CheckResult:
    """`discovery.well_known`. `fallback_works`: some target found without
    delegation answered federation requests."""
    name = server_name
    details = _wk_details(outcome)
    if outcome.kind == WK_NOT_CONSULTED:
        return ok(
            WELL_KNOWN, f"not consulted: {not_consulted_because}", details=details
        )
    if outcome.kind == WK_DELEGATED:
        if outcome.http is not None and outcome.http.content_type != "application/json":
            return warn(
                WELL_KNOWN,
                f"delegates to {outcome.delegated}, but is served as {outcome.http.content_type or 'no Content-Type'} instead of application/json",
                fix="Serve /.well-known/matrix/server with `Content-Type: application/json` "
                "(nginx: `default_type application/json;` in that location; Caddy: "
                "`header Content-Type application/json`; Apache: `Header set Content-Type application/json`).",
                details=details,
            )
        return ok(WELL_KNOWN, f"delegates to {outcome.delegated}", details=details)
    if outcome.kind in (WK_ABSENT, WK_UNREACHABLE, WK_NON_200):
        what = {
            WK_ABSENT: "none (HTTP 404)",
            WK_UNREACHABLE: f"none: {outcome.problem or 'nothing answers on port 443'}",
            WK_NON_200: f"HTTP {outcome.http.status if outcome.http else '?'}; peers treat it as absent",
        }[outcome.kind]
        if fallback_works:
            summary = f"{what}; peers use SRV or port 8448, which works"
            if outcome.kind == WK_NON_200:
                return warn(
                    WELL_KNOWN,
                    summary,
                    fix=f"Serve a 404 (or a valid delegation) at https://{name}/.well-known/matrix/server; "
                    "an error status may hide a delegation you meant to publish.",
                    details=details,
                )
            return ok(WELL_KNOWN, summary, details=details)
        return fail(
            WELL_KNOWN,
            f"{what}, and the fallback (SRV or port 8448) does not reach a working federation endpoint",
            fix=_FIX_PUBLISH.format(name=name),
            details=details,
        )
    if outcome.kind == WK_TLS:
        return fail(
            WELL_KNOWN,
            f"TLS to https://{name}/ failed ({outcome.reason}): peers silently ignore the delegation. {outcome.problem}",
            fix=f"Fix the certificate served for {name} on port 443 (valid, trusted, full chain: fullchain.pem, covering {name}).",
            details=details,
        )
    if outcome.kind == WK_TIMEOUT:
        dns_timeout = (
            outcome.http is not None and "lookup" in outcome.http.error_message
        )
        return fail(
            WELL_KNOWN,
            f"fetching https://{name}/.well-known/matrix/server timed out"
            + (
                f" ({outcome.http.error_message})"
                if dns_timeout and outcome.http
                else ""
            ),
            fix=(
                f"Make the DNS servers answer for {name} (authoritative servers reachable, or `dns_servers` correct)."
                if dns_timeout
                else f"Make port 443 on {name} answer (firewall, proxy up), or stop publishing A/AAAA records "
                f"for {name} that point at a host that does not answer."
            ),
            details=details,
        )
    if outcome.kind == WK_INVALID:
        return fail(
            WELL_KNOWN,
            f"present but invalid: {outcome.problem}",
            fix=f'Serve exactly {{"m.server": "<host>[:<port>]"}} at https://{name}/.well-known/matrix/server '
            "(a hostname or IP literal, optional port; no scheme, no path).",
            details=details,
        )
    return fail(
        WELL_KNOWN,
        f"fetching the well-known failed: {outcome.problem}",
        fix=_failed_fix(outcome.reason, name),
        details=details,
    )


def _failed_fix(reason: str | None, name: str) -> str:
    if reason in ("redirect_loop", "too_many_redirects"):
        return f"Fix the redirects for https://{name}/.well-known/matrix/server in the web server/proxy (they loop)."
    if reason == "redirect_scheme":
        return f"Redirect /.well-known/matrix/server on {name} only to https:// URLs, or serve it directly."
    if reason == "too_large":
        return "Serve a small JSON object (peers read at most 50 KiB)."
    return f"Make https://{name}/.well-known/matrix/server answer a plain HTTP 200 with the JSON object."


def check_well_known_consistency(
    server_name: str,
    main: WellKnownOutcome,
    per_address: Sequence[tuple[str, WellKnownOutcome]],
    *,
    not_consulted_because: str = "",
) -> CheckResult:
    if main.kind == WK_NOT_CONSULTED:
        return skip(
            WELL_KNOWN_CONSISTENCY,
            f"not applicable: the well-known is not consulted ({not_consulted_because})",
        )
    if not per_address:
        return skip(
            WELL_KNOWN_CONSISTENCY,
            f"not run: no address of {server_name} to fetch the well-known "
            "from (see discovery.well_known and discovery.addresses)",
        )
    details: dict[str, Any] = {
        "url": f"https://{server_name}/.well-known/matrix/server",
        "host_header": server_name,
        "sni": server_name,
        "by_address": {addr: o.describe() for addr, o in per_address},
    }
    if len(per_address) == 1:
        return ok(
            WELL_KNOWN_CONSISTENCY,
            f"one address ({per_address[0][0]}): nothing to compare",
            details=details,
        )
    answers = {o.comparable for _, o in per_address}
    if len(answers) == 1:
        return ok(
            WELL_KNOWN_CONSISTENCY,
            f"all {len(per_address)} addresses answer the same: {per_address[0][1].describe()}",
            details=details,
        )
    shown = "; ".join(f"{addr}: {o.describe()}" for addr, o in per_address)
    return warn(
        WELL_KNOWN_CONSISTENCY,
        f"the addresses of {server_name} disagree: {shown}",
        fix=f"Serve the same /.well-known/matrix/server on every A/AAAA address of {server_name} "
        "(often a stale AAAA record or a second web server), or remove the records that point elsewhere.",
        details=details,
    )


# ---------------------------------------------------------------------------
# SRV


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class SrvDecision:
    """Which SRV records Synapse uses for `name`."""

    name: str
    fed: DnsResult
    legacy: DnsResult | None
    kind: str  # "fed", "legacy", "none", "failed", "unavailable"
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
                name=name, fed=fed, legacy=legacy, kind="failed", failed=result
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
                    kind="unavailable",
                    records=records,
                )
            usable = tuple(r for r in records if r.target != ".")
            return SrvDecision(
                name=name,
                fed=fed,
                legacy=legacy,
                kind="fed" if result is fed else "legacy",
                records=usable,
            )
    return SrvDecision(name=name, fed=fed, legacy=legacy, kind="none")


def _srv_details(decision: SrvDecision) -> dict[str, Any]:
    details: dict[str, Any] = {
        SRV_FED_PREFIX + decision.name: decision.fed.to_json(),
    }
    if decision.legacy is not None:
        details[SRV_LEGACY_PREFIX + decision.name] = decision.legacy.to_json()
    details["used"] = decision.kind
    return details


def check_srv(
    decision: SrvDecision | None,
    *,
    not_used_because: str = "",
    cname_targets: Sequence[tuple[str, str]] = (),
    ignored: SrvDecision | None = None,
) -> CheckResult:
    """`discovery.srv`. `decision` is None when the spec says not to look
    (IP literal, explicit port). `ignored`: the server name's own records when
    the well-known delegates (they don't matter then)."""
    if decision is None:
        details: dict[str, Any] = {}
        summary = f"not used: {not_used_because}"
        if ignored is not None and ignored.records:
            details = _srv_details(ignored)
            summary += f"; the SRV records of {ignored.name} are ignored because the well-known delegates"
        return ok(SRV, summary, details=details)
    details = _srv_details(decision)
    if ignored is not None and ignored.records:
        details["ignored"] = _srv_details(ignored)
    fed_name = SRV_FED_PREFIX + decision.name
    if decision.kind == "failed":
        assert decision.failed is not None
        failed = decision.failed
        reason = (
            "timeout"
            if failed.outcome is DnsOutcome.TIMEOUT
            else ("servfail" if failed.outcome is DnsOutcome.SERVFAIL else "error")
        )
        details["reason"] = reason
        verb = "timed out" if reason == "timeout" else f"failed ({failed.describe()})"
        return fail(
            SRV,
            f"the SRV lookup of {failed.qname} {verb}: Synapse does not fall back to port 8448 after that",
            fix=f"Fix the DNS zone of {decision.name} (its authoritative servers, DNSSEC signatures) so that {failed.qname} "
            "answers, even if only with NXDOMAIN.",
            details=details,
        )
    if decision.kind == "unavailable":
        details["reason"] = "unavailable"
        return fail(
            SRV,
            f'{fed_name if decision.fed.srv else SRV_LEGACY_PREFIX + decision.name} has target "." : the service is declared unavailable',
            fix=f'Remove the SRV record with target "." for {decision.name}, or point it at the federation host and port.',
            details=details,
        )
    if decision.kind == "none":
        return ok(
            SRV,
            f"no SRV records for {decision.name}; peers use port {DEFAULT_FEDERATION_PORT}",
            details=details,
        )
    records = ", ".join(f"{r.target}:{r.port}" for r in decision.records)
    if cname_targets:
        details["cname_targets"] = [list(p) for p in cname_targets]
        details["reason"] = "cname_target"
        aliases = ", ".join(f"{a} -> {t}" for a, t in cname_targets)
        return warn(
            SRV,
            f"SRV target is a CNAME ({aliases}): the spec forbids it; Synapse follows it, other implementations may not",
            fix="Point the SRV record at the canonical host name (the CNAME's target), which has its own A/AAAA records.",
            details=details,
        )
    if decision.kind == "legacy":
        return warn(
            SRV,
            f"only the deprecated {SRV_LEGACY_PREFIX}{decision.name} record exists ({records})",
            fix=f"Add `{fed_name}` SRV records with the same targets; `_matrix._tcp` is deprecated since spec v1.8.",
            details=details,
        )
    return ok(SRV, f"{fed_name} -> {records}", details=details)


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


def check_addresses(
    hosts: Sequence[HostAddresses], *, literal_targets: Sequence[str] = ()
) -> CheckResult:
    """`discovery.addresses` over every host the targets come from."""
    details: dict[str, Any] = {
        "hosts": {h.host: {"A": h.a.to_json(), "AAAA": h.aaaa.to_json()} for h in hosts}
    }
    if literal_targets:
        details["ip_literals"] = list(literal_targets)
    all_addresses = [a for h in hosts for a in h.addresses] + list(literal_targets)
    classes = {a: classify_address(a) for a in all_addresses}
    forbidden = [a for a, c in classes.items() if c is AddressClass.FORBIDDEN]
    private = [a for a, c in classes.items() if c is AddressClass.PRIVATE]
    if forbidden:
        details["forbidden"] = forbidden
    if private:
        details["private"] = private

    failed_lookups = [
        (h.host, r)
        for h in hosts
        for r in (h.a, h.aaaa)
        if r.outcome in (DnsOutcome.SERVFAIL, DnsOutcome.TIMEOUT, DnsOutcome.ERROR)
    ]
    empty_hosts = [h for h in hosts if not h.addresses]
    if not all_addresses:
        timed_out = any(r.outcome is DnsOutcome.TIMEOUT for _, r in failed_lookups)
        details["reason"] = "timeout" if timed_out else "no_address"
        names = ", ".join(h.host for h in hosts) or "(no host)"
        why = "; ".join(
            f"{host} {r.rdtype}: {r.describe()}"
            for h in hosts
            for host, r in ((h.host, h.a), (h.host, h.aaaa))
        )
        verb = "timed out" if timed_out else "found no address"
        return fail(
            ADDRESSES,
            f"the A/AAAA lookup of {names} {verb} ({why})",
            fix=f"Add A and/or AAAA records for {names} pointing at the server (or at the reverse proxy in front of it).",
            details=details,
        )
    if forbidden:
        details["reason"] = "forbidden_address"
        return fail(
            ADDRESSES,
            f"{', '.join(forbidden)} can't be used (unspecified, link-local, multicast or broadcast): peers refuse them; not probed",
            fix="Replace these A/AAAA records with the server's public address.",
            details=details,
        )
    if empty_hosts or failed_lookups:
        problems = [f"{h.host} has no address" for h in empty_hosts] + [
            f"{host} {r.rdtype}: {r.describe()}" for host, r in failed_lookups
        ]
        return warn(
            ADDRESSES,
            "some lookups failed: " + "; ".join(problems),
            fix="Fix the DNS records listed (or remove the SRV targets that have no address), so every peer resolves the same addresses.",
            details=details,
        )
    if private:
        return warn(
            ADDRESSES,
            f"{', '.join(private)} is loopback, private or CGNAT space. Either this is split-horizon DNS or a private "
            "federation (then fine), or public peers can't use it: Synapse's default ip_range_blacklist refuses it. "
            "federation.notary tells which",
            fix="Publish the server's public address in the public DNS zone; keep private addresses only in an internal view "
            "(or, for a private federation, allow these ranges in the peers' ip_range_whitelist).",
            details=details,
        )
    summary = "; ".join(
        f"{h.host}: {', '.join(h.addresses)}" for h in hosts
    ) or ", ".join(literal_targets)
    return ok(ADDRESSES, summary, details=details)


def check_targets(targets: Sequence[Target], *, truncated: bool = False) -> CheckResult:
    details: dict[str, Any] = {"targets": [t.to_json() for t in targets]}
    if truncated:
        details["truncated"] = True
    if not targets:
        return ok(
            TARGETS,
            "no target address: nothing for peers to connect to",
            details=details,
        )
    first = targets[0]
    shown = ", ".join(t.address for t in targets)
    return ok(
        TARGETS,
        f"peers connect to {shown} with Host {first.host_header} and expect a certificate for {first.sni}",
        details=details,
    )
