"""Certificate chains, private keys and CA bundles, read and parsed once per
version of each file.

The config checks run on the reactor thread for every report, and parsing is
the expensive part (an RSA-4096 key takes milliseconds to validate, a system
CA bundle holds over a hundred roots). So every file is parsed once and
remembered under its (path, size, mtime_ns, inode): while a file is unchanged,
asking again costs one `os.stat`. A renewed certificate gets a new mtime or
inode and is read again. Parse failures are remembered the same way; a file
that cannot be opened is not (its stat may succeed while permissions deny the
read, and the admin may fix that without touching the file).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from collections.abc import Callable
from typing import TypeVar

import attr
from cryptography import x509
from cryptography.hazmat.primitives import serialization

MAX_PEM_FILE_BYTES = 1024 * 1024  # 1 MiB: a full chain or a key is a few KiB
# System bundles hold a few hundred KiB of roots; leave room for large ones.
MAX_CA_BUNDLE_BYTES = 16 * 1024 * 1024

# PemFileError kinds.
TOO_LARGE = "too_large"
NOT_PEM = "not_pem"
ENCRYPTED = "encrypted"

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)

T = TypeVar("T")


class PemFileError(ValueError):
    """The file was read but holds nothing usable; `kind` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CaBundle:
    path: str
    certificates: tuple[x509.Certificate, ...]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Parsed:
    signature: tuple[int, int, int]  # size, mtime_ns, inode
    value: object
    error: PemFileError | None


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


class PemFileCache:
    """Parsed files by (kind, path), valid while the file's stat is unchanged."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, str], _Parsed] = {}
        self._key_matches: dict[tuple[tuple[int, int, int], str, bytes], bool] = {}
        self._lock = threading.Lock()
        self.reads = 0  # files read and parsed (not answered from the cache)

    def _get(
        self, kind: str, path: str, limit: int, parse: Callable[[bytes], T]
    ) -> tuple[tuple[int, int, int], T]:
        """Raises OSError when the file cannot be read, PemFileError when
        `parse` refused it."""
        signature = _signature(os.stat(path))
        with self._lock:
            hit = self._parsed.get((kind, path))
        if hit is None or hit.signature != signature:
            with open(path, "rb") as f:
                signature = _signature(os.fstat(f.fileno()))
                data = f.read(limit + 1)
            self.reads += 1
            if len(data) > limit:
                hit = _Parsed(
                    signature,
                    None,
                    PemFileError(TOO_LARGE, f"larger than {limit} bytes"),
                )
            else:
                try:
                    hit = _Parsed(signature, parse(data), None)
                except PemFileError as e:
                    hit = _Parsed(signature, None, e)
            with self._lock:
                self._parsed[(kind, path)] = hit
        if hit.error is not None:
            raise PemFileError(hit.error.kind, str(hit.error))
        return hit.signature, hit.value  # type: ignore[return-value]

    def certificate_chain(self, path: str) -> tuple[x509.Certificate, ...]:
        """The certificates of a PEM chain file, in file order."""
        return self._get("chain", path, MAX_PEM_FILE_BYTES, _parse_chain)[1]

    def key_matches_certificate(self, key_path: str, cert: x509.Certificate) -> bool:
        """Whether the PEM private key in `key_path` belongs to `cert`.

        Raises OSError, or PemFileError (ENCRYPTED: it has a passphrase;
        NOT_PEM: no private key).
        """
        signature, public_key = self._get(
            "key", key_path, MAX_PEM_FILE_BYTES, _parse_private_key
        )
        fingerprint = hashlib.sha256(cert.public_bytes(_SPKI[0])).digest()
        memo_key = (signature, key_path, fingerprint)
        with self._lock:
            known = self._key_matches.get(memo_key)
        if known is None:
            known = public_key == cert.public_key().public_bytes(*_SPKI)
            with self._lock:
                self._key_matches[memo_key] = known
        return known

    def ca_bundle(self, path: str) -> CaBundle:
        """Every certificate of a PEM CA bundle that parses (may be none)."""
        return self._get(
            "ca", path, MAX_CA_BUNDLE_BYTES, lambda data: _parse_ca_bundle(path, data)
        )[1]


def _parse_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise PemFileError(NOT_PEM, "no PEM certificate") from None


def _parse_private_key(data: bytes) -> bytes:
    """The public half (DER SubjectPublicKeyInfo): the private key itself is
    not kept in memory longer than the parse."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PemFileError(ENCRYPTED, "the key has a passphrase") from None
    except Exception:  # ValueError and unsupported key types alike
        raise PemFileError(NOT_PEM, "no PEM private key") from None
    return key.public_key().public_bytes(*_SPKI)


def _parse_ca_bundle(path: str, data: bytes) -> CaBundle:
    """Certificates are parsed one by one: system bundles hold a few roots
    that newer cryptography releases refuse (e.g. negative serial numbers), and
    one of those must not hide the others."""
    certs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for match in _PEM_CERT_RE.finditer(data):
            try:
                certs.append(x509.load_pem_x509_certificate(match.group(0)))
            except ValueError:
                continue
    return CaBundle(path, tuple(certs))


# The process's cache: config checks, the lint command and the trust stores share it.
FILES = PemFileCache()
