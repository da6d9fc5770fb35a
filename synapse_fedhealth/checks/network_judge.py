"""Judges a `Resolution` and its targets' probes into check results
(SPEC 4.2-4.4). Pure: `now` (unix seconds) and the trust store are given.

An observation that never arrived (its probe did not finish by the deadline)
becomes a `fail` with reason "timeout", so every check id appears whatever
hung.
"""

from __future__ import annotations

from collections.abc import Mapping

import attr

from synapse_fedhealth.checks import connection, discovery, federation
from synapse_fedhealth.checks.federation import ServedKeys
from synapse_fedhealth.checks.proxy_detect import detect_proxy, with_proxy
from synapse_fedhealth.engine.probes import TargetProbe
from synapse_fedhealth.matrix_names import parse_server_name
from synapse_fedhealth.net.addresses import FederationIpRanges
from synapse_fedhealth.net.results import (
    ConnectOutcome,
    HttpResult,
    TlsProbeResult,
)
from synapse_fedhealth.net.tls import CertVerification, TrustStore
from synapse_fedhealth.report import CheckResult, fail
from synapse_fedhealth.server_discovery import (
    Resolution,
    SrvKind,
    Target,
    WellKnownKind,
    WellKnownOutcome,
)

BUG_FIX = "This is a bug in synapse-fedhealth; please report it with the log."


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class NetworkJudgement:
    checks: tuple[CheckResult, ...]
    # address ("ip:port") -> the parsed /_matrix/key/v2/server answer there.
    served_keys: Mapping[str, ServedKeys]
    # address -> the certificate verification of its chain.
    verifications: Mapping[str, CertVerification]
    # address -> the version answer ({"name":..., "version":...}).
    versions: Mapping[str, Mapping[str, str]]
    # certificate name -> earliest notAfter (unix seconds) seen for it.
    cert_expiry: Mapping[str, float]


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class JudgeSettings:
    trust: TrustStore
    # Why the configured CA files could not be used (the system store was).
    trust_error: str = ""
    cert_expiry_warning_days: int
    # This homeserver's own ip_range_blacklist / whitelist (None: unknown).
    ip_ranges: FederationIpRanges | None = None


def judge_network(
    resolution: Resolution,
    probes: Mapping[str, TargetProbe],
    settings: JudgeSettings,
    *,
    now: float,
) -> NetworkJudgement:
    name = resolution.server_name
    if resolution.invalid_name:
        return _invalid_name(resolution)
    tls_by_address = {
        t.address: _tls_or_timeout(t, probes.get(t.address)) for t in resolution.targets
    }
    any_reachable = any(p.connect == ConnectOutcome.OK for p in tls_by_address.values())
    per_target: list[CheckResult] = []
    served: dict[str, ServedKeys] = {}
    verifications: dict[str, CertVerification] = {}
    versions: dict[str, Mapping[str, str]] = {}
    cert_expiry: dict[str, float] = {}
    for target in resolution.targets:
        tls = tls_by_address[target.address]
        probe = probes.get(target.address) or TargetProbe()
        per_target.append(
            connection.check_reachable(target, tls, any_reachable=any_reachable)
        )
        per_target.append(connection.check_handshake(target, tls))
        per_target.append(
            _judge_certificate(
                target, tls, probe, settings, now, verifications, cert_expiry
            )
        )
        if (
            any_reachable
            and tls.connect != ConnectOutcome.OK
            and all(
                r is None or r.error is not None for r in (probe.version, probe.keys)
            )
        ):
            # A dead address next to working ones (e.g. a stale AAAA):
            # connection.reachable warns; the requests there can't fail.
            per_target.append(connection.skip_unreachable(federation.VERSION, target))
            per_target.append(connection.skip_unreachable(federation.KEYS, target))
            continue
        per_target.extend(
            _judge_endpoints(target, probe, name, now, served=served, versions=versions)
        )

    checks = judge_discovery(
        resolution,
        fallback_works=bool(versions) and resolution.delegated is None,
        ip_ranges=settings.ip_ranges,
    )
    checks.extend(per_target)
    well_known_http = resolution.well_known.http if resolution.well_known else None
    if (
        well_known_http is not None
        and well_known_http.cert_not_after is not None
        and well_known_http.error is None
    ):
        _earliest(cert_expiry, name, well_known_http.cert_not_after)
    return NetworkJudgement(
        checks=tuple(checks),
        served_keys=served,
        verifications=verifications,
        versions=versions,
        cert_expiry=cert_expiry,
    )


def _invalid_name(resolution: Resolution) -> NetworkJudgement:
    return NetworkJudgement(
        checks=(
            fail(
                discovery.TARGETS,
                f"{resolution.server_name!r} is not a valid server name: "
                f"{resolution.invalid_name}",
                fix="Set `server_name` to a host name (optionally with :port) as the Matrix spec's grammar allows.",
                details={"reason": "invalid_server_name"},
            ),
        ),
        served_keys={},
        verifications={},
        versions={},
        cert_expiry={},
    )


def _judge_certificate(
    target: Target,
    tls: TlsProbeResult,
    probe: TargetProbe,
    settings: JudgeSettings,
    now: float,
    verifications: dict[str, CertVerification],
    cert_expiry: dict[str, float],
) -> CheckResult:
    """`tls.certificate` for one target; records its verification and expiry."""
    cert_check, verification = connection.check_certificate(
        target,
        tls,
        settings.trust,
        warning_days=settings.cert_expiry_warning_days,
        now=now,
        issuers=probe.issuers,
    )
    if settings.trust_error:
        cert_check = attr.evolve(
            cert_check,
            details={**cert_check.details, "trust_store_error": settings.trust_error},
        )
    if verification is not None:
        verifications[target.address] = verification
        _earliest(cert_expiry, target.sni, verification.not_after)
    return cert_check


def _judge_endpoints(
    target: Target,
    probe: TargetProbe,
    server_name: str,
    now: float,
    *,
    served: dict[str, ServedKeys],
    versions: dict[str, Mapping[str, str]],
) -> list[CheckResult]:
    out: list[CheckResult] = []
    if probe.version is None:
        out.append(
            connection.timed_out(
                federation.VERSION, target, "GET " + federation.VERSION_PATH
            )
        )
    else:
        version_check, version = federation.check_version(target, probe.version)
        out.append(_seen_proxy(version_check, probe.version))
        if version is not None:
            versions[target.address] = version
    if probe.keys is None:
        out.append(
            connection.timed_out(federation.KEYS, target, "GET " + federation.KEYS_PATH)
        )
    else:
        keys_check, keys = federation.check_keys(
            target, probe.keys, server_name, now_ms=int(now * 1000)
        )
        out.append(_seen_proxy(keys_check, probe.keys))
        if keys is not None:
            served[target.address] = keys
    return out


def _seen_proxy(check: CheckResult, answer: HttpResult) -> CheckResult:
    """`check` with `details.proxy` when `answer` shows which proxy sent it."""
    guess = detect_proxy(answer.headers, answer.body)
    if guess is None:
        return check
    return attr.evolve(check, details=with_proxy(check.details, guess))


def judge_discovery(
    resolution: Resolution,
    *,
    fallback_works: bool,
    ip_ranges: FederationIpRanges | None = None,
) -> list[CheckResult]:
    """discovery.well_known, well_known_consistency, srv, addresses, targets.
    `fallback_works`: a target found without delegation answered federation.
    `ip_ranges`: this homeserver's own, for the private addresses it allows."""
    name = resolution.server_name
    out: list[CheckResult] = []
    not_consulted = resolution.srv_not_used_because
    main = resolution.well_known
    if not resolution.well_known_consulted or main is None:
        main = WellKnownOutcome(kind=WellKnownKind.NOT_CONSULTED)
        out.append(
            discovery.check_well_known(
                name,
                main,
                fallback_works=fallback_works,
                not_consulted_because=not_consulted,
            )
        )
        out.append(
            discovery.check_well_known_consistency(
                name, main, [], not_consulted_because=not_consulted
            )
        )
    else:
        out.append(
            discovery.check_well_known(name, main, fallback_works=fallback_works)
        )
        if resolution.well_known_by_address is None:
            out.append(
                timed_out(
                    discovery.WELL_KNOWN_CONSISTENCY,
                    f"fetching the well-known from each address of {name}",
                    name,
                )
            )
        else:
            out.append(
                discovery.check_well_known_consistency(
                    name, main, resolution.well_known_by_address
                )
            )
    out.append(_judge_srv(resolution))
    out.append(_judge_addresses(resolution, ip_ranges))
    out.append(
        discovery.check_targets(
            resolution.targets, truncated=resolution.targets_truncated
        )
    )
    return out


def _judge_srv(resolution: Resolution) -> CheckResult:
    name = resolution.server_name
    ignored = resolution.ignored_srv
    srv = resolution.srv
    if srv is not None:
        used_hosts = {r.target for r in srv.records}
        cname_targets = [
            (alias, target)
            for h in resolution.hosts
            if h.host in used_hosts
            for alias, target in h.cnames
            if alias == h.host
        ]
        return discovery.check_srv(srv, cname_targets=cname_targets, ignored=ignored)
    if resolution.srv_not_used_because:
        return discovery.check_srv(
            None, not_used_because=resolution.srv_not_used_because, ignored=ignored
        )
    if resolution.well_known_consulted and resolution.name_srv is None:
        return timed_out(discovery.SRV, f"the SRV lookup for {name}", name)
    return timed_out(discovery.SRV, "the SRV lookup", name)


def _judge_addresses(
    resolution: Resolution, ip_ranges: FederationIpRanges | None
) -> CheckResult:
    srv = resolution.srv
    if srv is not None and srv.kind in (SrvKind.FAILED, SrvKind.UNAVAILABLE):
        return fail(
            discovery.ADDRESSES,
            "no address: the SRV lookup stopped resolution (see discovery.srv)",
            fix="Fix the SRV problem reported by discovery.srv.",
            details={"reason": "srv_failed"},
        )
    if (
        not resolution.complete
        and not resolution.hosts
        and not resolution.literal_targets
    ):
        return timed_out(
            discovery.ADDRESSES,
            "resolving the federation host's addresses",
            resolution.server_name,
        )
    whitelisted: frozenset[str] = frozenset()
    # A server name that is itself an IP literal is checked by peers'
    # BlocklistingAgentWrapper against the blacklist alone: no whitelist
    # entry lets it through.
    if ip_ranges is not None and not _names_an_ip(resolution.server_name):
        whitelisted = frozenset(
            a
            for a in (
                *(a for h in resolution.hosts for a in h.addresses),
                *resolution.literal_targets,
            )
            if ip_ranges.allowed(a)
        )
    return discovery.check_addresses(
        resolution.hosts,
        literal_targets=resolution.literal_targets,
        parent_zones=resolution.parent_zones,
        whitelisted=whitelisted,
    )


def _names_an_ip(server_name: str) -> bool:
    try:
        return parse_server_name(server_name, strict=False).ip is not None
    except ValueError:
        return False


def _tls_or_timeout(target: Target, probe: TargetProbe | None) -> TlsProbeResult:
    if probe is not None and probe.tls is not None:
        return probe.tls
    return TlsProbeResult(
        ip=target.ip,
        port=target.port,
        sni=target.sni,
        connect=ConnectOutcome.TIMEOUT,
        connect_error="timed out",
    )


def _earliest(into: dict[str, float], name: str, not_after: float) -> None:
    previous = into.get(name)
    into[name] = min(previous, not_after) if previous else not_after


def timed_out(check_id: str, what: str, name: str) -> CheckResult:
    return fail(
        check_id,
        f"{what} timed out before the run's deadline",
        fix=f"Check that the DNS servers used here answer for {name} promptly, or raise the module's `timeout`.",
        details={"reason": "timeout"},
    )


def engine_error(message: str) -> CheckResult:
    """The network checks stopped on a bug of ours."""
    return fail(
        discovery.TARGETS,
        f"the network checks stopped on an unexpected error: {message}",
        fix=BUG_FIX,
        details={"reason": "error"},
    )
