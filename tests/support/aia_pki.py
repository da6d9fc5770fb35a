"""Certificates with Authority Information Access, built with cryptography's
builder (trustme can't add AIA): what tells a missing intermediate from an
untrusted CA.

    pki = AiaPki("http://127.0.0.1:8099")
    pki.root                  # the trusted root (write `root_pem` as the CA file)
    pki.intermediate          # issued by the root; published at pki.intermediate_url
    pki.leaf("hs.test")       # issued by the intermediate, with AIA -> intermediate_url
    pki.rogue_leaf("hs.test") # from an untrusted root, AIA -> pki.rogue_url (that root)
    pki.bare_leaf("hs.test")  # from another untrusted CA, no AIA at all
"""

from __future__ import annotations

import datetime

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
VALID = datetime.timedelta(days=90)
INTERMEDIATE_PATH = "/int.der"
ROGUE_PATH = "/rogue.der"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedhealth test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _aia(url: str) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(url),
            )
        ]
    )


def issue(
    cn: str,
    issuer: Issued | None,
    *,
    ca: bool,
    dns_names: tuple[str, ...] = (),
    aia_url: str | None = None,
) -> Issued:
    """A certificate for `cn` signed by `issuer` (None: self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + VALID)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
            critical=False,
        )
    if aia_url is not None:
        builder = builder.add_extension(_aia(aia_url), critical=False)
    signer = issuer.key if issuer else key
    return Issued(cert=builder.sign(signer, hashes.SHA256()), key=key)


class AiaPki:
    """A trusted root with an intermediate published at `base_url`, and two
    untrusted CAs (one publishing itself over AIA, one without AIA)."""

    def __init__(self, base_url: str) -> None:
        self.intermediate_url = base_url.rstrip("/") + INTERMEDIATE_PATH
        self.rogue_url = base_url.rstrip("/") + ROGUE_PATH
        self.root = issue("fedhealth test root", None, ca=True)
        self.intermediate = issue("fedhealth test intermediate", self.root, ca=True)
        self.rogue_root = issue("rogue root", None, ca=True)
        self.bare_ca = issue("private CA without AIA", None, ca=True)

    def leaf(self, *names: str) -> Issued:
        return issue(
            names[0],
            self.intermediate,
            ca=False,
            dns_names=names,
            aia_url=self.intermediate_url,
        )

    def rogue_leaf(self, *names: str) -> Issued:
        return issue(
            names[0], self.rogue_root, ca=False, dns_names=names, aia_url=self.rogue_url
        )

    def bare_leaf(self, *names: str) -> Issued:
        return issue(names[0], self.bare_ca, ca=False, dns_names=names)

    def published(self) -> dict[str, bytes]:
        """Path -> body, as the AIA HTTP server serves them."""
        return {
            INTERMEDIATE_PATH: self.intermediate.der,
            ROGUE_PATH: self.rogue_root.der,
        }
