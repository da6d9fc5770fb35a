"""A peer's certificate chooses its subject, issuer, SANs and AIA URLs: the
names are escaped where net/tls.py turns the chain into text, before any
judge or output sees them."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from synapse_fedhealth.checks.connection import check_certificate
from synapse_fedhealth.checks.discovery import Target
from synapse_fedhealth.net.results import HandshakeOutcome
from synapse_fedhealth.net.tls import (
    ConnectOutcome,
    IssuerFetch,
    TlsProbeResult,
    TrustStore,
    ca_issuer_urls,
    cert_summary,
    san_names,
    verify_chain,
)

NAME = "matrix.example.com"
NOW = datetime.datetime.now(datetime.timezone.utc)
HOSTILE_CN = "evil\x1b[31m\nforged line\u202e\x9b2J"
HOSTILE_ISSUER = "CA\x1b]0;title\x07\r"
HOSTILE_SAN = "bad\x1b[2j.example.com"
UNSAFE = ("\x1b", "\n", "\r", "\x07", "\u202e", "\x9b")


def hostile_cert() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, HOSTILE_CN),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "O\x00\x1b[0m"),
                ]
            )
        )
        .issuer_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTILE_ISSUER)])
        )
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(HOSTILE_SAN), x509.DNSName("ok.example.com")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(url),
                    )
                    for url in (
                        "http://ca.example.com/i\x1b[2J.der",
                        "http://ca.example.com/i.der",
                    )
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def assert_clean(text: str) -> None:
    assert not any(c in text for c in UNSAFE), repr(text)


def test_names_are_escaped_where_they_leave_the_chain() -> None:
    cert = hostile_cert()
    dns_names, _ = san_names(cert)
    assert dns_names == ("bad\\x1b[2j.example.com", "ok.example.com")
    verification = verify_chain([cert], NAME, TrustStore(), now=NOW.timestamp())
    for text in (
        verification.subject,
        verification.issuer,
        *verification.san_names,
        *verification.problems,
    ):
        assert_clean(text)
    assert "evil\\x1b[31m\\nforged line\\u202e\\x9b2J" in verification.subject
    assert "O=O\\00\\x1b[0m" in verification.subject  # RFC 4514 escapes NUL itself
    assert verification.issuer == "CN=CA\\x1b]0\\;title\\x07\\r"
    summary = cert_summary(cert)
    assert summary["SubjectCommonName"] == "evil\\x1b[31m\\nforged line\\u202e\\x9b2J"
    assert summary["IssuerCommonName"] == "CA\\x1b]0;title\\x07\\r"
    assert summary["DNSNames"] == ["bad\\x1b[2j.example.com", "ok.example.com"]
    fetched = IssuerFetch(url="http://ca.example.com/i.der", certificates=(cert,))
    assert_clean(fetched.to_json()["subjects"][0])


def test_an_aia_url_with_control_characters_is_not_fetched() -> None:
    assert ca_issuer_urls(hostile_cert()) == ("http://ca.example.com/i.der",)


def test_the_certificate_result_holds_only_escaped_text() -> None:
    cert = hostile_cert()
    target = Target(
        ip="203.0.113.7",
        port=8448,
        host_header="example.com",
        sni=NAME,
        hostname=NAME,
        source="test",
    )
    probe = TlsProbeResult(
        ip=target.ip,
        port=target.port,
        sni=NAME,
        connect=ConnectOutcome.OK,
        handshake=HandshakeOutcome.OK,
        protocol="TLSv1.3",
        chain=(cert,),
    )
    result, verification = check_certificate(
        target, probe, TrustStore(), warning_days=14, now=time.time()
    )
    assert verification is not None
    assert_clean(result.summary)
    strings = list(_strings(result.details))
    assert strings
    for text in strings:
        assert_clean(text)
    assert verification.subject in str(result.details["subject"])
