"""Offline analysis of the certificate and key files a TLS listener serves.

Synapse serves `tls_certificate_path` as a whole chain
(`use_certificate_chain_file`) with `tls_private_key_path`, so the file must
hold the leaf followed by its intermediates. The chain is judged by the same
verification as the network check `tls.certificate` (`net.tls`), and every
problem is returned as a `CertProblem` with a reason code shared with it;
nothing here raises on bad input. Files are read through `pem_files.FILES`,
so a run over unchanged files parses nothing.

These checks run at the homeserver's start-up; the TLS code (`net.tls`) is
imported only when there is a certificate file to judge.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attr
from cryptography import x509

from synapse_fedhealth import pem_files
from synapse_fedhealth.matrix_names import names_cover_host
from synapse_fedhealth.net import cert_reasons

if TYPE_CHECKING:
    from synapse_fedhealth.net.tls import TrustStore

SECONDS_PER_DAY = 24 * 60 * 60

# Reason codes (details.reason), the same words as tls.certificate where they overlap.
UNREADABLE = "unreadable"
NOT_PEM = "not_pem"
KEY_UNREADABLE = "key_unreadable"
KEY_MISMATCH = "key_mismatch"
EXPIRING_SOON = "expiring_soon"
EXPIRED = cert_reasons.REASON_EXPIRED
NOT_YET_VALID = cert_reasons.REASON_NOT_YET_VALID
SELF_SIGNED = cert_reasons.REASON_SELF_SIGNED
MISSING_INTERMEDIATE = cert_reasons.REASON_MISSING_INTERMEDIATE
UNTRUSTED_ISSUER = cert_reasons.REASON_UNTRUSTED_ISSUER
NAME_MISMATCH = cert_reasons.REASON_NAME_MISMATCH


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


def _fatal(reason: str, message: str) -> CertProblem:
    return CertProblem(reason=reason, fatal=True, message=message)


def _load_certs(path: str) -> tuple[tuple[x509.Certificate, ...], CertProblem | None]:
    try:
        return pem_files.FILES.certificate_chain(path), None
    except OSError as e:
        return (), _fatal(UNREADABLE, f"cannot read {path}: {e.strerror}")
    except pem_files.PemFileError as e:
        if e.kind == pem_files.TOO_LARGE:
            return (), _fatal(UNREADABLE, f"{path} is {e}")
        return (), _fatal(
            NOT_PEM, f"{path} holds no PEM certificate Synapse could load"
        )


def _check_key(key_path: str | None, leaf: x509.Certificate) -> CertProblem | None:
    if key_path is None:
        return _fatal(KEY_UNREADABLE, "tls_private_key_path is not set")
    try:
        matches = pem_files.FILES.key_matches_certificate(key_path, leaf)
    except OSError as e:
        return _fatal(KEY_UNREADABLE, f"cannot read {key_path}: {e.strerror}")
    except pem_files.PemFileError as e:
        if e.kind == pem_files.ENCRYPTED:
            return _fatal(
                KEY_UNREADABLE,
                f"{key_path} is encrypted; Synapse cannot load a key with a passphrase",
            )
        return _fatal(
            KEY_UNREADABLE, f"{key_path} holds no PEM private key Synapse could load"
        )
    if not matches:
        return _fatal(
            KEY_MISMATCH,
            f"the private key in {key_path} does not belong to the certificate",
        )
    return None


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )


def _validity_problems(
    certs: Sequence[x509.Certificate], now: float, warning_days: int
) -> list[CertProblem]:
    from synapse_fedhealth.net import tls

    problems = []
    for position, cert in enumerate(certs):
        what = (
            "the certificate" if position == 0 else f"chain certificate #{position + 1}"
        )
        not_after = cert.not_valid_after_utc.timestamp()
        validity = tls.validity_reason(cert, now)
        if validity == EXPIRED:
            problems.append(
                _fatal(
                    EXPIRED,
                    f"{what} ({cert.subject.rfc4514_string()}) expired on {_when(not_after)}",
                )
            )
        elif validity == NOT_YET_VALID:
            not_before = cert.not_valid_before_utc.timestamp()
            problems.append(
                _fatal(NOT_YET_VALID, f"{what} is not valid before {_when(not_before)}")
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


def _in_file_order(certs: Sequence[x509.Certificate]) -> bool:
    """Whether each certificate names the next one as its issuer, as Synapse
    must serve them (the signatures are OpenSSL's to check)."""
    return all(c.issuer == n.subject for c, n in zip(certs, certs[1:], strict=False))


def _trust_problem(
    certs: Sequence[x509.Certificate], trust: TrustStore
) -> CertProblem | None:
    from synapse_fedhealth.net import tls

    if not _in_file_order(certs):
        return _fatal(
            MISSING_INTERMEDIATE,
            "the certificates in the file do not form a chain: the one "
            "after the leaf did not issue it (wrong order or wrong intermediate)",
        )
    checked = tls.check_chain(certs, trust)
    if checked.reason is None:
        return None
    top = certs[-1]
    if checked.reason == SELF_SIGNED:
        return _fatal(
            SELF_SIGNED, "the certificate is self-signed; Synapse peers reject it"
        )
    if checked.reason == MISSING_INTERMEDIATE:
        return _fatal(
            MISSING_INTERMEDIATE,
            "the file holds only the leaf certificate, not the intermediate "
            f"that issued it ({top.issuer.rfc4514_string()})",
        )
    if not trust.files:
        return None  # no trust store to judge with; the network check will
    if checked.issuer_not_found:
        return _fatal(
            UNTRUSTED_ISSUER,
            f"the chain ends at {top.issuer.rfc4514_string()}, which is not "
            f"a CA in {', '.join(trust.files)}",
        )
    return _fatal(checked.reason, checked.message)


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
    them. `ca_files` are the CA bundles peers trust (unreadable ones are left
    out); empty: the system's."""
    from synapse_fedhealth.net import tls

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
    trust = tls.TrustStore(ca_files, skip_unreadable=True)
    trust_problem = _trust_problem(certs, trust)
    if trust_problem is not None:
        problems.append(trust_problem)
    dns_names, ip_names = tls.san_names(leaf)
    names = dns_names + ip_names
    if not names_cover_host(names, expected_host):
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
        trust_store=", ".join(trust.files) or None,
    )
