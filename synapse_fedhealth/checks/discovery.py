"""Server discovery checks (SPEC 4.2): well-known, SRV, addresses, targets.

Pure judges: `synapse_fedhealth.server_discovery` holds the observations and
the spec's rules; these turn them into check results. Semantics follow the
server-server spec v1.19 "Resolving server names" and Synapse's own client.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from synapse_fedhealth.net.addresses import (
    AddressClass,
    classify_address,
)
from synapse_fedhealth.net.results import DnsOutcome, DnsResult
from synapse_fedhealth.report import CheckResult, fail, ok, skip, warn
from synapse_fedhealth.server_discovery import (
    DEFAULT_FEDERATION_PORT,
    SRV_FED_PREFIX,
    SRV_LEGACY_PREFIX,
    HostAddresses,
    SrvDecision,
    SrvKind,
    WellKnownKind,
    WellKnownOutcome,
    clip,
)
from synapse_fedhealth.server_discovery import Target as Target

WELL_KNOWN = "discovery.well_known"
WELL_KNOWN_CONSISTENCY = "discovery.well_known_consistency"
SRV = "discovery.srv"
ADDRESSES = "discovery.addresses"
TARGETS = "discovery.targets"


# ---------------------------------------------------------------------------
# Well-known


def _wk_details(outcome: WellKnownOutcome) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if outcome.http is not None:
        details.update(outcome.http.request_details())
        if outcome.http.content_type is not None:
            details["content_type"] = outcome.http.content_type
    if outcome.kind == WellKnownKind.DELEGATED:
        details["m.server"] = outcome.delegated
    elif isinstance(outcome.m_server, str):
        details["m.server"] = clip(outcome.m_server)
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
    if outcome.kind == WellKnownKind.NOT_CONSULTED:
        return ok(
            WELL_KNOWN, f"not consulted: {not_consulted_because}", details=details
        )
    if outcome.kind == WellKnownKind.DELEGATED:
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
    if outcome.kind in (
        WellKnownKind.ABSENT,
        WellKnownKind.UNREACHABLE,
        WellKnownKind.NON_200,
    ):
        return _no_delegation(name, outcome, details, fallback_works=fallback_works)
    if outcome.kind == WellKnownKind.TLS:
        return fail(
            WELL_KNOWN,
            f"TLS to https://{name}/ failed ({outcome.reason}): peers silently ignore the delegation. {outcome.problem}",
            fix=f"Fix the certificate served for {name} on port 443 (valid, trusted, full chain: fullchain.pem, covering {name}).",
            details=details,
        )
    if outcome.kind == WellKnownKind.TIMEOUT:
        return _timed_out(name, outcome, details)
    if outcome.kind == WellKnownKind.INVALID:
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


def _no_delegation(
    name: str,
    outcome: WellKnownOutcome,
    details: dict[str, Any],
    *,
    fallback_works: bool,
) -> CheckResult:
    """No well-known (404, unreachable, an error status): fine when the
    fallback works, a failure when nothing else reaches the server."""
    what = {
        WellKnownKind.ABSENT: "none (HTTP 404)",
        WellKnownKind.UNREACHABLE: f"none: {outcome.problem or 'nothing answers on port 443'}",
        WellKnownKind.NON_200: f"HTTP {outcome.http.status if outcome.http else '?'}; peers treat it as absent",
    }[outcome.kind]
    if fallback_works:
        summary = f"{what}; peers use SRV or port 8448, which works"
        if outcome.kind == WellKnownKind.NON_200:
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


def _timed_out(
    name: str, outcome: WellKnownOutcome, details: dict[str, Any]
) -> CheckResult:
    dns_timeout = outcome.http is not None and "lookup" in outcome.http.error_message
    return fail(
        WELL_KNOWN,
        f"fetching https://{name}/.well-known/matrix/server timed out"
        + (f" ({outcome.http.error_message})" if dns_timeout and outcome.http else ""),
        fix=(
            f"Make the DNS servers answer for {name} (authoritative servers reachable, or `dns_servers` correct)."
            if dns_timeout
            else f"Make port 443 on {name} answer (firewall, proxy up), or stop publishing A/AAAA records "
            f"for {name} that point at a host that does not answer."
        ),
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
    if main.kind == WellKnownKind.NOT_CONSULTED:
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
    if decision.kind == SrvKind.FAILED:
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
    if decision.kind == SrvKind.UNAVAILABLE:
        details["reason"] = "unavailable"
        return fail(
            SRV,
            f'{fed_name if decision.fed.srv else SRV_LEGACY_PREFIX + decision.name} has target "." : the service is declared unavailable',
            fix=f'Remove the SRV record with target "." for {decision.name}, or point it at the federation host and port.',
            details=details,
        )
    if decision.kind == SrvKind.NONE:
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
    if decision.kind == SrvKind.LEGACY:
        return warn(
            SRV,
            f"only the deprecated {SRV_LEGACY_PREFIX}{decision.name} record exists ({records})",
            fix=f"Add `{fed_name}` SRV records with the same targets; `_matrix._tcp` is deprecated since spec v1.8.",
            details=details,
        )
    return ok(SRV, f"{fed_name} -> {records}", details=details)


# ---------------------------------------------------------------------------
# Addresses and targets


# A zone exists for this host's resolver when its SOA query gets NOERROR.
_ZONE_SEEN = (DnsOutcome.ANSWER, DnsOutcome.NO_ANSWER)


def check_addresses(
    hosts: Sequence[HostAddresses],
    *,
    literal_targets: Sequence[str] = (),
    parent_zones: Sequence[DnsResult] = (),
    whitelisted: Collection[str] = (),
) -> CheckResult:
    """`discovery.addresses` over every host the targets come from.

    `whitelisted`: the private addresses this homeserver's own
    ip_range_whitelist allows: a private federation declared in the config.

    `parent_zones`: SOA lookups of the zones above a host without address
    (asked only then); they tell "add the records" from "this host can't
    resolve public names" and "the domain does not exist"."""
    details: dict[str, Any] = {
        "hosts": {h.host: {"A": h.a.to_json(), "AAAA": h.aaaa.to_json()} for h in hosts}
    }
    if literal_targets:
        details["ip_literals"] = list(literal_targets)
    if parent_zones:
        details["parent_zones"] = {z.qname: {"SOA": z.to_json()} for z in parent_zones}
    all_addresses = [a for h in hosts for a in h.addresses] + list(literal_targets)
    classes = {a: classify_address(a) for a in all_addresses}
    forbidden = [a for a, c in classes.items() if c is AddressClass.FORBIDDEN]
    private = [a for a, c in classes.items() if c is AddressClass.PRIVATE]
    allowed = [a for a in private if a in whitelisted]
    private = [a for a in private if a not in whitelisted]
    if forbidden:
        details["forbidden"] = forbidden
    if private:
        details["private"] = private
    if allowed:
        details["whitelisted"] = allowed

    failed_lookups = [
        (h.host, r)
        for h in hosts
        for r in (h.a, h.aaaa)
        if r.outcome in (DnsOutcome.SERVFAIL, DnsOutcome.TIMEOUT, DnsOutcome.ERROR)
    ]
    empty_hosts = [h for h in hosts if not h.addresses]
    if not all_addresses:
        return _no_address(hosts, failed_lookups, parent_zones, details)
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
    if allowed:
        summary += (
            f"; {', '.join(allowed)}: a private federation declared by this "
            "server's ip_range_whitelist; peers need the same entry"
        )
    return ok(ADDRESSES, summary, details=details)


def _no_address(
    hosts: Sequence[HostAddresses],
    failed_lookups: Sequence[tuple[str, DnsResult]],
    parent_zones: Sequence[DnsResult],
    details: dict[str, Any],
) -> CheckResult:
    """`discovery.addresses` when no host has an address: the records are
    missing, the lookups timed out, or the zone above says why."""
    timed_out = any(r.outcome is DnsOutcome.TIMEOUT for _, r in failed_lookups)
    details["reason"] = "timeout" if timed_out else "no_address"
    names = ", ".join(h.host for h in hosts) or "(no host)"
    why = "; ".join(
        f"{host} {r.rdtype}: {r.describe()}"
        for h in hosts
        for host, r in ((h.host, h.a), (h.host, h.aaaa))
    )
    verb = "timed out" if timed_out else "found no address"
    summary = f"the A/AAAA lookup of {names} {verb} ({why})"
    zone_problem = _parent_zone_problem(summary, parent_zones, details)
    if zone_problem is not None:
        return zone_problem
    return fail(
        ADDRESSES,
        summary,
        fix=f"Add A and/or AAAA records for {names} pointing at the server (or at the reverse proxy in front of it).",
        details=details,
    )


def _parent_zone_problem(
    summary: str, parent_zones: Sequence[DnsResult], details: dict[str, Any]
) -> CheckResult | None:
    """The failure to report instead of "add A records", when the zones above
    the host show the records are not what is missing; None otherwise."""
    if not parent_zones:
        return None
    unseen = [z for z in parent_zones if z.outcome not in _ZONE_SEEN]
    if len(unseen) == len(parent_zones):
        # Not even the TLD: the resolver this host uses sees no public DNS
        # (a sandbox, a broken resolv.conf, a captive or split resolver).
        details["reason"] = "host_cannot_resolve"
        zones = "; ".join(f"{z.qname} SOA: {z.describe()}" for z in parent_zones)
        return fail(
            ADDRESSES,
            f"{summary}; this host cannot resolve public names (even {zones})",
            fix="Fix this host's DNS resolver: /etc/resolv.conf must point at a "
            "resolver that answers for public names (test with `dig SOA "
            f"{parent_zones[-1].qname}`), or set the module's `dns_servers` "
            "option to one that does. Peers use the public DNS, so the records "
            "themselves may well be right.",
            details=details,
        )
    seen = {z.qname for z in parent_zones if z.outcome in _ZONE_SEEN}
    domain = next(
        (
            z
            for z in parent_zones
            if z.qname.count(".") == 1 and z.outcome is DnsOutcome.NXDOMAIN
        ),
        None,
    )
    if domain is not None and domain.qname.split(".", 1)[1] in seen:
        # The TLD resolves, the domain does not: it is not registered (or
        # has expired, or its delegation is broken).
        details["reason"] = "domain_missing"
        name = domain.qname
        return fail(
            ADDRESSES,
            f"{summary}; the domain {name} itself does not exist in DNS",
            fix=f"Register {name} (or renew it), and check its NS delegation "
            f"at the registrar (`dig NS {name}`); then add the A/AAAA records.",
            details=details,
        )
    return None


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
