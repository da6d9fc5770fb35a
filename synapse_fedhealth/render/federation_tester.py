"""The report's `federation_tester` view: the same findings under the field
names of matrix-federation-tester's `/api/report`, so that tools built for it
(json_exporter rules, scripts) keep working.

A view, not a judge: it reads the `Resolution`, the probes and the network
judgement. `FederationOK` is the report's verdict: the runner sets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synapse_fedhealth.checks.network_judge import NetworkJudgement
from synapse_fedhealth.engine.probes import TargetProbe
from synapse_fedhealth.net.results import ConnectOutcome, DnsOutcome, HandshakeOutcome
from synapse_fedhealth.net.tls import cert_summary
from synapse_fedhealth.server_discovery import (
    SRV_FED_PREFIX,
    SRV_LEGACY_PREFIX,
    Resolution,
    SrvKind,
    WellKnownKind,
)

_NO_KEY_CHECKS: Mapping[str, Any] = {
    "AllChecksOK": False,
    "MatchingServerName": False,
    "FutureValidUntilTS": False,
    "HasEd25519Key": False,
    "AllEd25519ChecksOK": False,
    "Ed25519Checks": {},
}


def render_federation_tester(
    resolution: Resolution,
    probes: Mapping[str, TargetProbe],
    judgement: NetworkJudgement,
    *,
    now: float,
) -> dict[str, Any]:
    if resolution.invalid_name:
        return {}
    reports, errors = _reports(resolution, probes, judgement, now)
    return {
        "WellKnownResult": _well_known(resolution, now),
        "DNSResult": _dns(resolution),
        "ConnectionReports": reports,
        "ConnectionErrors": errors,
        "Version": _version(probes, judgement),
    }


def _well_known(resolution: Resolution, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"m.server": resolution.delegated or ""}
    outcome = resolution.well_known
    # MFT's CacheExpiresAt: unix seconds, 0 when the answer names no lifetime.
    out["CacheExpiresAt"] = 0
    if outcome is not None and resolution.well_known_consulted:
        if outcome.kind != WellKnownKind.DELEGATED:
            out["result"] = outcome.describe()
        if outcome.cache_lifetime_s is not None:
            out["CacheExpiresAt"] = int(now + outcome.cache_lifetime_s)
    elif not resolution.well_known_consulted:
        out["result"] = "not consulted: " + resolution.srv_not_used_because
    return out


def _dns(resolution: Resolution) -> dict[str, Any]:
    srv = resolution.srv
    out: dict[str, Any] = {
        "SRVSkipped": srv is None,
        "SRVCName": "",
        "SRVRecords": [],
        "SRVError": None,
    }
    if srv is not None:
        prefix = SRV_LEGACY_PREFIX if srv.kind == SrvKind.LEGACY else SRV_FED_PREFIX
        out["SRVCName"] = prefix + srv.name + "."
        out["SRVRecords"] = [
            {
                "Target": r.target + ".",
                "Port": r.port,
                "Priority": r.priority,
                "Weight": r.weight,
            }
            for r in srv.records
        ]
        if srv.failed is not None:
            out["SRVError"] = {"Message": srv.failed.describe()}
    hosts: dict[str, Any] = {}
    for h in resolution.hosts:
        lookup_errors = [
            f"{r.rdtype}: {r.describe()}"
            for r in (h.a, h.aaaa)
            if r.outcome not in (DnsOutcome.ANSWER, DnsOutcome.NO_ANSWER)
        ]
        canonical = h.cnames[-1][1] if h.cnames else h.host
        hosts[h.host] = {
            "CName": canonical + ".",
            "Addrs": list(h.addresses),
            "Error": {"Message": "; ".join(lookup_errors)} if lookup_errors else None,
        }
    out["Hosts"] = hosts
    out["Addrs"] = [t.address for t in resolution.targets]
    return out


def _reports(
    resolution: Resolution,
    probes: Mapping[str, TargetProbe],
    judgement: NetworkJudgement,
    now: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    reports: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    name = resolution.server_name
    for target in resolution.targets:
        probe = probes.get(target.address)
        tls = probe.tls if probe is not None else None
        if (
            tls is None
            or tls.connect != ConnectOutcome.OK
            or tls.handshake != HandshakeOutcome.OK
        ):
            message = "timed out"
            if tls is not None:
                message = tls.connect_error or tls.handshake_error or "failed"
            errors[target.address] = {"Message": message}
            continue
        keys = judgement.served_keys.get(target.address)
        verification = judgement.verifications.get(target.address)
        checks = (
            keys.federation_tester_checks(name, int(now * 1000))
            if keys is not None
            else dict(_NO_KEY_CHECKS)
        )
        valid_certs = verification is not None and verification.valid
        checks["ValidCertificates"] = valid_certs
        checks["AllChecksOK"] = bool(checks["AllChecksOK"]) and valid_certs
        report_errors: list[dict[str, str]] = []
        if verification is not None and not verification.valid:
            report_errors.extend({"Message": p} for p in verification.problems)
        reports[target.address] = {
            "Certificates": [cert_summary(c) for c in tls.chain],
            "Cipher": {
                "Version": _tester_version(tls.protocol),
                "CipherSuite": tls.cipher or "",
            },
            "Checks": checks,
            "Errors": report_errors,
            "Ed25519VerifyKeys": dict(keys.ed25519_keys) if keys is not None else None,
            "Info": {},
            "Keys": dict(keys.raw) if keys is not None else None,
        }
    return reports, errors


def _version(
    probes: Mapping[str, TargetProbe], judgement: NetworkJudgement
) -> dict[str, Any]:
    if judgement.versions:
        return dict(next(iter(judgement.versions.values())))
    answers = [p.version for p in probes.values() if p.version is not None]
    first_error = next((r.error_message or r.error for r in answers if r.error), None)
    first_status = next((r.status for r in answers if r.status is not None), None)
    return {
        "error": first_error
        or (f"HTTP {first_status}" if first_status else "no answer")
    }


def _tester_version(protocol: str | None) -> str:
    return protocol.replace("TLSv", "TLS ") if protocol else ""
