"""Connection checks and our own certificate verification (no network)."""

from __future__ import annotations

import datetime
import time

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from synapse_fedhealth.checks.connection import (
    check_certificate,
    check_handshake,
    check_reachable,
)
from synapse_fedhealth.checks.discovery import Target
from synapse_fedhealth.net.results import HandshakeOutcome
from synapse_fedhealth.net.tls import (
    ConnectOutcome,
    TlsProbeResult,
    TrustStore,
    name_matches,
    verify_chain,
)
from synapse_fedhealth.report import Status

NAME = "matrix.example.com"
TARGET = Target(
    ip="203.0.113.7",
    port=8448,
    host_header="example.com",
    sni=NAME,
    hostname=NAME,
    source="test",
)
NOW = datetime.datetime.now(datetime.timezone.utc)


def load_chain(
    leaf: trustme.LeafCert, *, with_intermediates: bool = True
) -> list[x509.Certificate]:
    blobs = leaf.cert_chain_pems if with_intermediates else leaf.cert_chain_pems[:1]
    return [x509.load_pem_x509_certificate(b.bytes()) for b in blobs]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def trust(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TrustStore:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return TrustStore([str(path)])


def probe(chain: list[x509.Certificate], **kw: object) -> TlsProbeResult:
    base: dict[str, object] = {
        "ip": TARGET.ip,
        "port": TARGET.port,
        "sni": NAME,
        "connect": ConnectOutcome.OK,
        "handshake": "ok",
        "protocol": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "chain": tuple(chain),
    }
    base.update(kw)
    return TlsProbeResult(**base)  # type: ignore[arg-type]


def self_signed(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def test_valid_chain(ca: trustme.CA, trust: TrustStore) -> None:
    verification = verify_chain(
        load_chain(ca.issue_cert(NAME)), NAME, trust, now=NOW.timestamp()
    )
    assert verification.valid, verification.problems
    result, _ = check_certificate(
        TARGET,
        probe(load_chain(ca.issue_cert(NAME))),
        trust,
        warning_days=14,
        now=time.time(),
    )
    assert result.status is Status.OK
    assert result.target == TARGET.address
    assert {"url", "host_header", "sni"} <= set(result.details)


def test_expired(ca: trustme.CA, trust: TrustStore) -> None:
    leaf = ca.issue_cert(
        NAME,
        not_before=NOW - datetime.timedelta(days=100),
        not_after=NOW - datetime.timedelta(days=1),
    )
    result, _ = check_certificate(
        TARGET, probe(load_chain(leaf)), trust, warning_days=14, now=time.time()
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == "expired"
    assert "Renew" in (result.fix or "")


def test_not_yet_valid(ca: trustme.CA, trust: TrustStore) -> None:
    leaf = ca.issue_cert(
        NAME,
        not_before=NOW + datetime.timedelta(days=2),
        not_after=NOW + datetime.timedelta(days=100),
    )
    assert (
        verify_chain(load_chain(leaf), NAME, trust, now=NOW.timestamp()).reason
        == "not_yet_valid"
    )


def test_expiring_soon_warns(ca: trustme.CA, trust: TrustStore) -> None:
    leaf = ca.issue_cert(NAME, not_after=NOW + datetime.timedelta(days=3))
    result, verification = check_certificate(
        TARGET, probe(load_chain(leaf)), trust, warning_days=14, now=time.time()
    )
    assert result.status is Status.WARN
    assert verification is not None and verification.not_after < time.time() + 4 * 86400


def test_self_signed(trust: TrustStore) -> None:
    assert (
        verify_chain([self_signed(NAME)], NAME, trust, now=NOW.timestamp()).reason
        == "self_signed"
    )


def test_untrusted_issuer(trust: TrustStore) -> None:
    other = trustme.CA()
    intermediate = other.create_child_ca()
    chain = load_chain(intermediate.issue_cert(NAME))
    assert len(chain) >= 2
    assert (
        verify_chain(chain, NAME, trust, now=NOW.timestamp()).reason
        == "untrusted_issuer"
    )


def test_missing_intermediate(ca: trustme.CA, trust: TrustStore) -> None:
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert(NAME)
    assert verify_chain(load_chain(leaf), NAME, trust, now=NOW.timestamp()).valid
    verification = verify_chain(
        load_chain(leaf, with_intermediates=False), NAME, trust, now=NOW.timestamp()
    )
    assert verification.reason == "missing_intermediate"
    result, _ = check_certificate(
        TARGET,
        probe(load_chain(leaf, with_intermediates=False)),
        trust,
        warning_days=14,
        now=time.time(),
    )
    assert "fullchain.pem" in (result.fix or "")


def test_name_mismatch(ca: trustme.CA, trust: TrustStore) -> None:
    verification = verify_chain(
        load_chain(ca.issue_cert("other.example.com")), NAME, trust, now=NOW.timestamp()
    )
    assert verification.reason == "name_mismatch"
    assert "other.example.com" in verification.problems[0]


def test_wildcards_and_ip_names(ca: trustme.CA) -> None:
    leaf = load_chain(ca.issue_cert("*.example.com", "192.0.2.1"))[0]
    assert name_matches("matrix.example.com", leaf)
    assert not name_matches("a.b.example.com", leaf)
    assert not name_matches("example.com", leaf)
    assert name_matches("192.0.2.1", leaf)
    assert not name_matches("192.0.2.2", leaf)


def test_reachable_refused_fails_alone_warns_with_others() -> None:
    refused = TlsProbeResult(
        ip=TARGET.ip,
        port=8448,
        sni=NAME,
        connect=ConnectOutcome.REFUSED,
        connect_error="refused",
    )
    alone = check_reachable(TARGET, refused, any_reachable=False)
    assert alone.status is Status.FAIL
    assert alone.details["reason"] == "refused"
    assert check_reachable(TARGET, refused, any_reachable=True).status is Status.WARN


def test_reachable_timeout_says_filtered() -> None:
    filtered = TlsProbeResult(
        ip=TARGET.ip,
        port=8448,
        sni=NAME,
        connect=ConnectOutcome.TIMEOUT,
        connect_error="timed out",
    )
    result = check_reachable(TARGET, filtered, any_reachable=False)
    assert result.details["reason"] == "timeout"
    assert "timed out" in result.summary


def test_handshake_old_protocol_fails(ca: trustme.CA) -> None:
    result = check_handshake(
        TARGET, probe(load_chain(ca.issue_cert(NAME)), protocol="TLSv1")
    )
    assert result.status is Status.FAIL
    assert check_handshake(TARGET, probe([], protocol="TLSv1.2")).status is Status.OK


def test_handshake_failure_and_unreachable_skip() -> None:
    garbage = TlsProbeResult(
        ip=TARGET.ip,
        port=8448,
        sni=NAME,
        connect=ConnectOutcome.OK,
        handshake=HandshakeOutcome.FAILED,
        handshake_error="wrong version number",
    )
    result = check_handshake(TARGET, garbage)
    assert result.status is Status.FAIL
    assert "plain-HTTP" in (result.fix or "")
    refused = TlsProbeResult(
        ip=TARGET.ip, port=8448, sni=NAME, connect=ConnectOutcome.REFUSED
    )
    assert check_handshake(TARGET, refused).status is Status.SKIP


def test_system_trust_store_loads() -> None:
    assert TrustStore().description == "the system trust store"


def test_certificate_expiry_reaches_the_metric(
    ca: trustme.CA, trust: TrustStore
) -> None:
    """The engine hands the served certificate's notAfter (keyed by SNI) to
    the synapse_fedhealth_tls_certificate_expiry_timestamp_seconds gauge; a
    renamed detail key silently emptied the metric once."""
    from synapse_fedhealth.checks.network_judge import JudgeSettings, judge_network
    from synapse_fedhealth.engine.probes import TargetProbe
    from synapse_fedhealth.server_discovery import Resolution

    chain = load_chain(ca.issue_cert(NAME))
    _, verification = check_certificate(
        TARGET, probe(chain), trust, warning_days=14, now=time.time()
    )
    assert verification is not None
    judgement = judge_network(
        Resolution(server_name=NAME, targets=(TARGET,), complete=True),
        {TARGET.address: TargetProbe(tls=probe(chain))},
        JudgeSettings(trust=trust, cert_expiry_warning_days=14),
        now=time.time(),
    )
    assert judgement.cert_expiry == {NAME: verification.not_after}
