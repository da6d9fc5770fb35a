"""Per-address connection checks (SPEC 4.3): TCP, TLS handshake, certificate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synapse_fedhealth.net.results import (
    ConnectOutcome,
    HandshakeOutcome,
    TlsProbeResult,
)
from synapse_fedhealth.net.tls import (
    REASON_EXPIRED,
    REASON_MISSING_INTERMEDIATE,
    REASON_NAME_MISMATCH,
    REASON_NOT_YET_VALID,
    REASON_SELF_SIGNED,
    REASON_UNTRUSTED_ISSUER,
    CertVerification,
    IssuerFetch,
    TrustStore,
    verify_chain,
)
from synapse_fedhealth.report import CheckResult, fail, ok, skip, warn
from synapse_fedhealth.server_discovery import Target

REACHABLE = "connection.reachable"
TLS_HANDSHAKE = "tls.handshake"
TLS_CERTIFICATE = "tls.certificate"

_MIN_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
SECONDS_PER_DAY = 24 * 3600


def probe_details(target: Target) -> dict[str, Any]:
    """Every network check records what it used (SPEC 3). A TLS probe sends
    no HTTP request: `host_header` is the one peers send on this address."""
    return {
        "url": f"tls://{target.address}",
        "host_header": target.host_header,
        "sni": target.sni,
    }


def check_reachable(
    target: Target, probe: TlsProbeResult, *, any_reachable: bool
) -> CheckResult:
    details = probe_details(target)
    if probe.connect == ConnectOutcome.OK:
        details["connect_ms"] = probe.connect_ms
        return ok(
            REACHABLE,
            f"TCP connect to {target.address} succeeded",
            target=target.address,
            details=details,
        )
    details["reason"] = probe.connect
    details["error"] = probe.connect_error
    what = {
        ConnectOutcome.REFUSED: "was refused (nothing listens on that port)",
        ConnectOutcome.TIMEOUT: "timed out (the port is filtered by a firewall, or the host is down)",
        ConnectOutcome.UNREACHABLE: "failed: the address is unreachable from here",
    }.get(probe.connect, f"failed: {probe.connect_error}")
    fix = (
        f"Open TCP port {target.port} on {target.ip} to the internet (firewall, cloud security group, NAT port forward) "
        f"and make a TLS listener (Synapse or the reverse proxy) listen on it."
    )
    if probe.connect == ConnectOutcome.REFUSED:
        fix = f"Make the reverse proxy (or Synapse's TLS listener) listen on {target.address}, e.g. nginx `listen {target.port} ssl;`."
    summary = f"TCP connect to {target.address} {what}"
    if any_reachable:
        # Peers try the next address, so this costs time, not federation.
        return warn(
            REACHABLE,
            summary + "; other addresses work",
            fix=fix + f" Or remove the DNS record that points at {target.ip}.",
            target=target.address,
            details=details,
        )
    return fail(REACHABLE, summary, fix=fix, target=target.address, details=details)


def _not_connected(check_id: str, target: Target) -> CheckResult:
    return skip(
        check_id,
        f"not checked: {target.address} is not reachable",
        target=target.address,
        details=probe_details(target),
    )


def skip_unreachable(check_id: str, target: Target) -> CheckResult:
    """For a per-address request check on an address that does not connect
    while others do: connection.reachable already warns about it, and peers
    use the other addresses, so the request itself is not a failure."""
    return skip(
        check_id,
        f"not checked: {target.address} is not reachable (other addresses work; see connection.reachable)",
        target=target.address,
        details=probe_details(target),
    )


def check_handshake(target: Target, probe: TlsProbeResult) -> CheckResult:
    if probe.connect != ConnectOutcome.OK:
        return _not_connected(TLS_HANDSHAKE, target)
    details = probe_details(target)
    if probe.handshake == HandshakeOutcome.TIMEOUT:
        details["reason"] = "timeout"
        return fail(
            TLS_HANDSHAKE,
            f"the TLS handshake with {target.address} timed out",
            fix="Make the service on this port speak TLS promptly (a plain-HTTP or stuck listener, or a proxy without `ssl`).",
            target=target.address,
            details=details,
        )
    if probe.handshake != HandshakeOutcome.OK:
        details["reason"] = "handshake_failed"
        details["error"] = probe.handshake_error
        return fail(
            TLS_HANDSHAKE,
            f"the TLS handshake with {target.address} (SNI {target.sni}) failed: {probe.handshake_error}",
            fix=f"Serve TLS on port {target.port}: nginx `listen {target.port} ssl;` with `ssl_certificate`, "
            f"or a Synapse listener with `tls: true`. A plain-HTTP listener on this port also gives this error.",
            target=target.address,
            details=details,
        )
    details["protocol"] = probe.protocol
    details["cipher"] = probe.cipher
    if probe.protocol not in _MIN_PROTOCOLS:
        details["reason"] = "old_protocol"
        return fail(
            TLS_HANDSHAKE,
            f"{target.address} negotiated {probe.protocol}; peers require TLS 1.2 or newer",
            fix="Enable TLS 1.2 and 1.3 (nginx `ssl_protocols TLSv1.2 TLSv1.3;`, Apache `SSLProtocol -all +TLSv1.2 +TLSv1.3`).",
            target=target.address,
            details=details,
        )
    return ok(
        TLS_HANDSHAKE,
        f"{probe.protocol}, {probe.cipher}",
        target=target.address,
        details=details,
    )


_CERT_FIXES = {
    REASON_EXPIRED: "Renew the certificate (e.g. `certbot renew`) and reload the server or proxy that serves it.",
    REASON_NOT_YET_VALID: "Check the clock of the machine that issued the certificate, or wait until it becomes valid; serve the previous one meanwhile.",
    REASON_SELF_SIGNED: "Use a certificate from a CA peers trust (e.g. Let's Encrypt); federation needs publicly trusted certificates.",
    REASON_UNTRUSTED_ISSUER: "Peers trust only public CAs: get a certificate from one (e.g. Let's Encrypt with certbot) "
    "and serve its chain (fullchain.pem). Serving more of a private CA's chain does not help.",
    REASON_MISSING_INTERMEDIATE: "Serve the full chain: nginx `ssl_certificate /etc/letsencrypt/live/<name>/fullchain.pem;` (not cert.pem); "
    "Apache `SSLCertificateFile .../fullchain.pem`; Synapse `tls_certificate_path` must point at the full chain.",
}


def check_certificate(
    target: Target,
    probe: TlsProbeResult,
    trust: TrustStore,
    *,
    warning_days: int,
    now: float,
    issuers: Sequence[IssuerFetch] | None = None,
) -> tuple[CheckResult, CertVerification | None]:
    """`issuers`: what the AIA caIssuers URLs gave when the chain's issuer is
    neither sent nor trusted (None: not looked up)."""
    if probe.connect != ConnectOutcome.OK:
        return _not_connected(TLS_CERTIFICATE, target), None
    if probe.handshake != HandshakeOutcome.OK or not probe.chain:
        return skip(
            TLS_CERTIFICATE,
            "not checked: no TLS handshake",
            target=target.address,
            details=probe_details(target),
        ), None
    verification = verify_chain(
        probe.chain, target.sni, trust, now=now, issuers=issuers
    )
    details = probe_details(target)
    details.update(
        {
            "subject": verification.subject,
            "issuer": verification.issuer,
            "names": list(verification.san_names),
            "not_after": int(verification.not_after),
            "chain_length": verification.chain_length,
            "trust_store": trust.description,
        }
    )
    if issuers is not None:
        details["aia"] = [fetch.to_json() for fetch in issuers]
    if verification.missing_intermediate is not None:
        details["missing_intermediate"] = verification.missing_intermediate
    if not verification.valid:
        reason = verification.reason
        details["reason"] = reason
        details["problems"] = list(verification.problems)
        fix = _CERT_FIXES.get(reason or "", "")
        if verification.missing_intermediate is not None and reason == (
            REASON_MISSING_INTERMEDIATE
        ):
            fix = (
                f"Serve the intermediate {verification.missing_intermediate} after "
                "the leaf. " + fix
            )
        if reason == REASON_NAME_MISMATCH:
            fix = (
                f"Get a certificate that covers {target.sni} (peers ask for this name: the server name, or the "
                "m.server host when the well-known delegates), and serve it for that SNI."
            )
        return (
            fail(
                TLS_CERTIFICATE,
                f"certificate rejected ({reason}): {verification.problems[0]}",
                fix=fix,
                target=target.address,
                details=details,
            ),
            verification,
        )
    days_left = (verification.not_after - now) / SECONDS_PER_DAY
    details["days_left"] = round(days_left, 1)
    if days_left < warning_days:
        return (
            warn(
                TLS_CERTIFICATE,
                f"the certificate for {target.sni} expires in {days_left:.1f} days",
                fix="Renew the certificate now; check that automatic renewal (certbot timer, Caddy, Traefik ACME) runs and reloads the server.",
                target=target.address,
                details=details,
            ),
            verification,
        )
    return (
        ok(
            TLS_CERTIFICATE,
            f"valid for {target.sni}, {days_left:.0f} days left",
            target=target.address,
            details=details,
        ),
        verification,
    )


def timed_out(check_id: str, target: Target, what: str) -> CheckResult:
    details = probe_details(target)
    details["reason"] = "timeout"
    return fail(
        check_id,
        f"{what} on {target.address} timed out before the run's deadline",
        fix="Find why the address answers so slowly (overloaded proxy, packet loss), or raise the module's `timeout`.",
        target=target.address,
        details=details,
    )
