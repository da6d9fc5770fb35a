"""A private PKI for the lab: a root CA, an intermediate, and leaf
certificates in every shape a federation check must recognise.

    pki = Pki(tmp_path / "pki")
    good = pki.issue("example.test", "matrix.example.test")          # CertVariant.VALID
    old = pki.issue("example.test", variant=CertVariant.EXPIRED)
    soon = pki.issue("example.test", variant=CertVariant.EXPIRING_SOON, days=3)
    nginx_vhost(cert=good.served_chain, key=good.key)
    module_config["tls_ca_file"] = str(pki.ca_file)
    peer_config["federation_custom_ca_list"] = [str(pki.ca_file)]

Only the root is trusted: `pki.ca_file` holds the root alone (Synapse reads
only the first certificate of each `federation_custom_ca_list` file), so a
leaf served without its intermediate really fails verification.

Leaves are issued by the intermediate, so a valid chain is leaf +
intermediate. `CertFiles.served_chain` is what a server should be configured
with for the variant: the full chain, except for MISSING_INTERMEDIATE (the leaf
alone) and SELF_SIGNED (the leaf, which is its own issuer).
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    import trustme

VALID_DAYS = 90
DEFAULT_EXPIRING_DAYS = 3


class CertVariant(str, enum.Enum):
    VALID = "valid"
    EXPIRED = "expired"  # notAfter yesterday
    NOT_YET_VALID = "not_yet_valid"  # notBefore tomorrow
    WRONG_NAME = "wrong_name"  # SANs for other names ("wrong-name.<name>")
    SELF_SIGNED = "self_signed"  # a leaf that is its own issuer
    UNTRUSTED_CA = "untrusted_ca"  # root + intermediate that nobody trusts
    MISSING_INTERMEDIATE = (
        "missing_intermediate"  # valid, served without the intermediate
    )
    EXPIRING_SOON = "expiring_soon"  # notAfter in `days` days (default 3)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CertFiles:
    """The PEM files of one leaf."""

    variant: CertVariant
    names: tuple[str, ...]  # the names/IPs the certificate is valid for
    key: Path  # the private key
    leaf: Path  # the leaf certificate alone
    fullchain: Path  # leaf + intermediate(s) (= leaf for SELF_SIGNED)
    served_chain: Path  # what the server should present for this variant
    not_before: datetime.datetime
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:80] or "cert"


def _san(identity: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        return x509.DNSName(identity)


def _self_signed(
    names: Sequence[str], not_before: datetime.datetime, not_after: datetime.datetime
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a self-signed leaf for `names`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_san(n) for n in names]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    """A root CA and an intermediate (trusted through `ca_file`), plus an
    untrusted root and intermediate for UNTRUSTED_CA; files go to `directory`."""

    def __init__(self, directory: str | Path) -> None:
        # Imported here: the demo uses CertFiles and nginx without trustme,
        # which only the test extras install.
        import trustme

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.root = trustme.CA(organization_name="netlab root")
        self.intermediate = self.root.create_child_ca()
        self._untrusted_root: trustme.CA | None = None
        self._untrusted_intermediate: trustme.CA | None = None
        self.ca_file = self.directory / "root-ca.pem"
        self.root.cert_pem.write_to_path(str(self.ca_file))
        self.intermediate_file = self.directory / "intermediate-ca.pem"
        self.intermediate.cert_pem.write_to_path(str(self.intermediate_file))
        self._count = 0

    def _untrusted(self) -> trustme.CA:
        import trustme

        if self._untrusted_intermediate is None:
            self._untrusted_root = trustme.CA(organization_name="netlab untrusted root")
            self._untrusted_intermediate = self._untrusted_root.create_child_ca()
        return self._untrusted_intermediate

    def issue(
        self,
        *names: str,
        variant: CertVariant | str = CertVariant.VALID,
        days: int | None = None,
        label: str | None = None,
    ) -> CertFiles:
        """A leaf for `names` (DNS names or IP literals) in `variant`.

        `days`: for EXPIRING_SOON, how many days until it expires (default
        3); for other variants, the validity (default 90 days).
        """
        if not names:
            raise ValueError("a certificate needs at least one name")
        v = CertVariant(variant)
        now = _now()
        not_before = now - datetime.timedelta(days=1)
        not_after = now + datetime.timedelta(days=days or VALID_DAYS)
        if v is CertVariant.EXPIRED:
            not_before, not_after = (
                now - datetime.timedelta(days=91),
                now - datetime.timedelta(days=1),
            )
        elif v is CertVariant.NOT_YET_VALID:
            not_before = now + datetime.timedelta(days=1)
        elif v is CertVariant.EXPIRING_SOON:
            not_after = now + datetime.timedelta(
                days=DEFAULT_EXPIRING_DAYS if days is None else days
            )
        cert_names = tuple(names)
        if v is CertVariant.WRONG_NAME:
            cert_names = tuple(
                f"wrong-name.{n}" if not _is_ip(n) else "wrong-name.invalid"
                for n in names
            )

        self._count += 1
        stem = (
            self.directory / f"{self._count:03d}-{_safe(label or names[0])}-{v.value}"
        )
        key_path = stem.with_name(stem.name + ".key")
        leaf_path = stem.with_name(stem.name + ".crt")
        full_path = stem.with_name(stem.name + ".fullchain.pem")

        if v is CertVariant.SELF_SIGNED:
            key_pem, cert_pem = _self_signed(cert_names, not_before, not_after)
            key_path.write_bytes(key_pem)
            leaf_path.write_bytes(cert_pem)
            full_path.write_bytes(cert_pem)
            served = full_path
        else:
            issuer = (
                self._untrusted()
                if v is CertVariant.UNTRUSTED_CA
                else self.intermediate
            )
            leaf = issuer.issue_cert(
                *cert_names, not_before=not_before, not_after=not_after
            )
            leaf.private_key_pem.write_to_path(str(key_path))
            pems = leaf.cert_chain_pems
            pems[0].write_to_path(str(leaf_path))
            full_path.write_bytes(b"".join(p.bytes() for p in pems))
            served = leaf_path if v is CertVariant.MISSING_INTERMEDIATE else full_path
        return CertFiles(
            variant=v,
            names=cert_names,
            key=key_path,
            leaf=leaf_path,
            fullchain=full_path,
            served_chain=served,
            not_before=not_before,
            not_after=not_after,
        )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
