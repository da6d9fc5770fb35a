"""Offline analysis of the certificate and key files a TLS listener serves.

Synapse serves `tls_certificate_path` as a whole chain
(`use_certificate_chain_file`) with `tls_private_key_path`, so the file must
hold the leaf followed by its intermediates. Every problem is returned as a
`CertProblem` with a reason code shared with the network check
`tls.certificate`; nothing here raises on bad input.
"""

from __future__ import annotations

import datetime
import re
import ssl
import warnings
from collections.abc import Sequence

import attr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from synapse_fedhealth.checks.config_names import host_matches_dns_pattern, parse_ip

MAX_PEM_FILE_BYTES = 1024 * 1024  # 1 MiB: a full chain is a few KiB
SECONDS_PER_DAY = 24 * 60 * 60

# Reason codes (details.reason), the same words as tls.certificate where they overlap.
UNREADABLE = "unreadable"
NOT_PEM = "not_pem"
KEY_UNREADABLE = "key_unreadable"
KEY_MISMATCH = "key_mismatch"
EXPIRED = "expired"
EXPIRING_SOON = "expiring_soon"
NOT_YET_VALID = "not_yet_valid"
SELF_SIGNED = "self_signed"
MISSING_INTERMEDIATE = "missing_intermediate"
UNTRUSTED_ISSUER = "untrusted_issuer"
NAME_MISMATCH = "name_mismatch"


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class CertProblem:
    reason: str
    fatal: bool  # True: peers reject the certificate (fail); False: warn
    message: str


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class CertAnalysis:
    problems: tuple[CertProblem, ...]
    subject: str | None = None
    names: tuple[str, ...] = ()  # DNS and IP subject alternative names of the leaf
    not_after: float | None = None  # epoch seconds
    chain_length: int = 0
    trust_store: str | None = None  # which CA bundle judged the chain; None: not judged


def _read_limited(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_PEM_FILE_BYTES + 1)
    if len(data) > MAX_PEM_FILE_BYTES:
        raise ValueError(f"larger than {MAX_PEM_FILE_BYTES} bytes")
    return data


def _load_certs(path: str) -> tuple[list[x509.Certificate], CertProblem | None]:
    try:
        data = _read_limited(path)
    except OSError as e:
        return [], CertProblem(
            reason=UNREADABLE, fatal=True, message=f"cannot read {path}: {e.strerror}"
        )
    except ValueError as e:
        return [], CertProblem(reason=UNREADABLE, fatal=True, message=f"{path} is {e}")
    try:
        return x509.load_pem_x509_certificates(data), None
    except ValueError:
        return [], CertProblem(
            reason=NOT_PEM,
            fatal=True,
            message=f"{path} holds no PEM certificate Synapse could load",
        )


def _check_key(key_path: str | None, leaf: x509.Certificate) -> CertProblem | None:
    if key_path is None:
        return CertProblem(
            reason=KEY_UNREADABLE, fatal=True, message="tls_private_key_path is not set"
        )
    try:
        key = serialization.load_pem_private_key(_read_limited(key_path), password=None)
    except OSError as e:
        return CertProblem(
            reason=KEY_UNREADABLE,
            fatal=True,
            message=f"cannot read {key_path}: {e.strerror}",
        )
    except TypeError:
        return CertProblem(
            reason=KEY_UNREADABLE,
            fatal=True,
            message=f"{key_path} is encrypted; Synapse cannot load a key with a passphrase",
        )
    except Exception:  # ValueError and unsupported key types alike
        return CertProblem(
            reason=KEY_UNREADABLE,
            fatal=True,
            message=f"{key_path} holds no PEM private key Synapse could load",
        )
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        return CertProblem(
            reason=KEY_MISMATCH,
            fatal=True,
            message=f"the private key in {key_path} does not belong to the certificate",
        )
    return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # ValueError, InvalidSignature, TypeError (unsupported key)
        return False
    return True


def _is_self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _issued_by(cert, cert)


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )


def _validity_problems(
    certs: Sequence[x509.Certificate], now: float, warning_days: int
) -> list[CertProblem]:
    problems = []
    for position, cert in enumerate(certs):
        what = (
            "the certificate" if position == 0 else f"chain certificate #{position + 1}"
        )
        not_before = cert.not_valid_before_utc.timestamp()
        not_after = cert.not_valid_after_utc.timestamp()
        if now > not_after:
            problems.append(
                CertProblem(
                    reason=EXPIRED,
                    fatal=True,
                    message=f"{what} ({cert.subject.rfc4514_string()}) expired on {_when(not_after)}",
                )
            )
        elif now < not_before:
            problems.append(
                CertProblem(
                    reason=NOT_YET_VALID,
                    fatal=True,
                    message=f"{what} is not valid before {_when(not_before)}",
                )
            )
        elif not_after - now < warning_days * SECONDS_PER_DAY:
            days = int((not_after - now) // SECONDS_PER_DAY)
            problems.append(
                CertProblem(
                    reason=EXPIRING_SOON,
                    fatal=False,
                    message=f"{what} expires on {_when(not_after)}, in {days} day(s)",
                )
            )
    return problems


def _linked_chain(
    certs: Sequence[x509.Certificate],
) -> tuple[list[x509.Certificate], bool]:
    """The prefix of `certs` where each certificate issued the previous one,
    and whether the whole file formed such a chain."""
    chain = [certs[0]]
    for cert in certs[1:]:
        if not _issued_by(chain[-1], cert):
            return chain, False
        chain.append(cert)
    return chain, True


_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def _load_trust_store(
    ca_files: Sequence[str],
) -> tuple[str | None, list[x509.Certificate]]:
    """The CA bundle(s) to judge the chain with; the system's when none is given.

    Certificates are loaded one by one: system bundles hold a few roots that
    newer cryptography releases refuse (e.g. negative serial numbers), and one
    of those must not hide the others.
    """
    if not ca_files:
        system = ssl.get_default_verify_paths().cafile
        ca_files = [system] if system else []
    roots = []
    read = []
    for path in ca_files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        read.append(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for match in _PEM_CERT_RE.finditer(data):
                try:
                    roots.append(x509.load_pem_x509_certificate(match.group(0)))
                except ValueError:
                    continue
    return (", ".join(read) or None), roots


def _trust_problems(
    chain: Sequence[x509.Certificate], complete: bool, ca_files: Sequence[str]
) -> tuple[str | None, list[CertProblem]]:
    store_path, roots = _load_trust_store(ca_files)
    anchored = any(_issued_by(cert, root) for cert in chain for root in roots)
    leaf = chain[0]
    if anchored and complete:
        return store_path, []
    if not complete:
        return store_path, [
            CertProblem(
                reason=MISSING_INTERMEDIATE,
                fatal=True,
                message="the certificates in the file do not form a chain: the one "
                "after the leaf did not issue it (wrong order or wrong intermediate)",
            )
        ]
    if anchored:
        return store_path, []
    if len(chain) == 1 and _is_self_issued(leaf):
        return store_path, [
            CertProblem(
                reason=SELF_SIGNED,
                fatal=True,
                message="the certificate is self-signed; Synapse peers reject it",
            )
        ]
    top = chain[-1]
    if len(chain) == 1:
        return store_path, [
            CertProblem(
                reason=MISSING_INTERMEDIATE,
                fatal=True,
                message="the file holds only the leaf certificate, not the intermediate "
                f"that issued it ({top.issuer.rfc4514_string()})",
            )
        ]
    if store_path is None:
        return None, []  # no trust store to judge with; the network check will
    return store_path, [
        CertProblem(
            reason=UNTRUSTED_ISSUER,
            fatal=True,
            message=f"the chain ends at {top.issuer.rfc4514_string()}, which is not "
            f"a CA in {store_path}",
        )
    ]


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        ).value
    except x509.ExtensionNotFound:
        return ()
    assert isinstance(san, x509.SubjectAlternativeName)
    dns_names = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns_names) + tuple(ips)


def covers_host(names: Sequence[str], host: str) -> bool:
    """Whether a certificate with these SANs is valid for `host` (service_identity
    semantics: SANs only, no fallback to the subject CN)."""
    ip = parse_ip(host)
    if ip is not None:
        return any(parse_ip(name) == ip for name in names)
    return any(
        host_matches_dns_pattern(host, name) for name in names if parse_ip(name) is None
    )


def analyse_certificate_files(
    *,
    cert_path: str,
    key_path: str | None,
    expected_host: str,
    now: float,
    warning_days: int,
    ca_files: Sequence[str],
) -> CertAnalysis:
    """All problems of a certificate chain file and its key, as peers would see
    them. `ca_files` are the CA bundles peers trust; empty: the system's."""
    certs, load_problem = _load_certs(cert_path)
    if load_problem is not None or not certs:
        return CertAnalysis(
            problems=(load_problem,) if load_problem else (),
        )
    leaf = certs[0]
    problems: list[CertProblem] = []
    key_problem = _check_key(key_path, leaf)
    if key_problem is not None:
        problems.append(key_problem)
    problems.extend(_validity_problems(certs, now, warning_days))
    chain, complete = _linked_chain(certs)
    store_path, trust = _trust_problems(chain, complete, ca_files)
    problems.extend(trust)
    names = certificate_names(leaf)
    if not covers_host(names, expected_host):
        problems.append(
            CertProblem(
                reason=NAME_MISMATCH,
                fatal=False,
                message=f"the certificate is not valid for {expected_host} "
                f"(it covers {', '.join(names) or 'no names'})",
            )
        )
    return CertAnalysis(
        problems=tuple(problems),
        subject=leaf.subject.rfc4514_string(),
        names=names,
        not_after=leaf.not_valid_after_utc.timestamp(),
        chain_length=len(certs),
        trust_store=store_path,
    )
