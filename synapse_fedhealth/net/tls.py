"""TLS: the trust store, our own chain verification, and a handshake probe.

Chain verification is shared by `tls.certificate` and `config.tls_listener`.

We verify chains ourselves (rather than letting the handshake fail) so that a
rejected certificate comes with one precise reason a human can act on.
"""

from __future__ import annotations

import functools
import hashlib
import os
import ssl
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import attr
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
)
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from synapse_fedhealth import pem_files
from synapse_fedhealth.matrix_names import bare_host, names_cover_host, parse_ip
from synapse_fedhealth.net.cert_reasons import CERT_REASONS as CERT_REASONS
from synapse_fedhealth.net.cert_reasons import REASON_EXPIRED as REASON_EXPIRED
from synapse_fedhealth.net.cert_reasons import (
    REASON_MISSING_INTERMEDIATE as REASON_MISSING_INTERMEDIATE,
)
from synapse_fedhealth.net.cert_reasons import (
    REASON_NAME_MISMATCH as REASON_NAME_MISMATCH,
)
from synapse_fedhealth.net.cert_reasons import (
    REASON_NOT_YET_VALID as REASON_NOT_YET_VALID,
)
from synapse_fedhealth.net.cert_reasons import (
    REASON_SELF_SIGNED as REASON_SELF_SIGNED,
)
from synapse_fedhealth.net.cert_reasons import (
    REASON_UNTRUSTED_ISSUER as REASON_UNTRUSTED_ISSUER,
)
from synapse_fedhealth.net.results import ConnectOutcome as ConnectOutcome
from synapse_fedhealth.net.results import HandshakeOutcome
from synapse_fedhealth.net.results import TlsProbeResult as TlsProbeResult
from synapse_fedhealth.remote_text import clean_line

# When several problems apply, the most fundamental is the reason.
_REASON_PRIORITY = {r: i for i, r in enumerate(CERT_REASONS)}
_REASON_PRIORITY[REASON_SELF_SIGNED] = -1

# OpenSSL X509_V_ERR_* codes we classify.
_X509_ERR_UNABLE_TO_GET_ISSUER_CERT = 2
_X509_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_X509_ERR_SELF_SIGNED_CERT_IN_CHAIN = 19
_X509_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_X509_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
_ISSUER_NOT_FOUND = (
    _X509_ERR_UNABLE_TO_GET_ISSUER_CERT,
    _X509_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    _X509_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
)
# X509_V_FLAG_NO_CHECK_TIME: OpenSSL would judge dates by the machine's clock;
# callers judge them against the `now` they pass in.
_X509_FLAG_NO_CHECK_TIME = 0x200000

# A hostile server may send a huge chain; only this many certificates are kept.
MAX_CHAIN_LENGTH = 10

# Authority Information Access: the URL where a certificate's issuer is
# published (RFC 5280 4.2.2.1), fetched as browsers do to tell a missing
# intermediate from an untrusted CA. Bounded: a few URLs, a few certificates,
# one hop (the fetched certificate's own AIA is not followed).
MAX_ISSUER_URLS = 2
MAX_ISSUER_CERTIFICATES = 4  # per answer (a PKCS#7 bundle may hold several)
MAX_ISSUER_BYTES = 64 * 1024  # 64 KiB: a certificate is 1-2 KiB


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class IssuerFetch:
    """One AIA caIssuers URL and what fetching it gave."""

    url: str
    certificates: tuple[x509.Certificate, ...] = ()
    size: int = 0  # bytes received
    error: str = ""  # "" when certificates were parsed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "bytes": self.size}
        if self.certificates:
            out["subjects"] = [name_text(c.subject) for c in self.certificates]
        if self.error:
            out["error"] = self.error
        return out


def ca_issuer_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's AIA caIssuers URLs (http and https), at most
    MAX_ISSUER_URLS; empty when it has none or the extension is malformed."""
    try:
        aia = cert.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
    except (x509.ExtensionNotFound, ValueError):
        return ()
    urls = [
        str(d.access_location.value)
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
        and str(d.access_location.value).lower().startswith(("http://", "https://"))
        # A URL with control characters is the peer's text, not a place to go.
        and clean_line(str(d.access_location.value)) == str(d.access_location.value)
    ]
    return tuple(urls[:MAX_ISSUER_URLS])


def parse_issuer_certificates(body: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates of an AIA answer: DER, PEM or PKCS#7 (DER or PEM), as
    CAs publish them. Raises ValueError when it is none of these."""
    parsers: list[Any] = []
    if b"-----BEGIN PKCS7" in body:
        parsers.append(pkcs7.load_pem_pkcs7_certificates)
    elif b"-----BEGIN" in body:
        parsers.append(x509.load_pem_x509_certificates)
    else:
        parsers.append(lambda b: [x509.load_der_x509_certificate(b)])
        parsers.append(pkcs7.load_der_pkcs7_certificates)
    for parse in parsers:
        try:
            certs = tuple(parse(body))
        except ValueError:
            continue
        if certs:
            return certs[:MAX_ISSUER_CERTIFICATES]
    raise ValueError("the answer is not a certificate (DER, PEM or PKCS#7)")


class TrustStore:
    """The roots peers use: CA bundle files, or the system store.

    Files are parsed through `pem_files.FILES`, and the OpenSSL store built
    from them is shared while they are unchanged, so building a TrustStore
    again costs a stat per file. Raises OSError or ValueError when a CA file
    cannot be read or holds no certificate, unless `skip_unreadable`: then
    such files are left out (`files` lists the ones used).
    """

    def __init__(
        self, ca_files: Sequence[str] = (), *, skip_unreadable: bool = False
    ) -> None:
        self.ca_files = tuple(ca_files)
        if not self.ca_files:
            cafile, capath = _system_locations()
            self.description = "the system trust store"
            if cafile is not None:
                # The fallback when CA files fail: it must not fail itself.
                bundles: tuple[pem_files.CaBundle, ...] = tuple(
                    _ca_bundles([cafile], skip_unreadable=True)
                )
            elif capath is not None:
                self.files: tuple[str, ...] = ()
                self._store = _directory_store(capath)
                return
            else:
                bundles = ()
        else:
            self.description = "the CA file(s) " + ", ".join(self.ca_files)
            bundles = tuple(_ca_bundles(self.ca_files, skip_unreadable))
        self.files = tuple(b.path for b in bundles)
        self._store = _bundle_store(bundles)

    @property
    def store(self) -> crypto.X509Store:
        return self._store


def _ca_bundles(
    ca_files: Sequence[str], skip_unreadable: bool
) -> Iterator[pem_files.CaBundle]:
    for path in ca_files:
        try:
            bundle = pem_files.FILES.ca_bundle(path)
        except (OSError, ValueError):
            if skip_unreadable:
                continue
            raise
        if not bundle.certificates and not skip_unreadable:
            raise ValueError(f"{path} holds no PEM certificate")
        yield bundle


@functools.cache
def _system_locations() -> tuple[str | None, str | None]:
    """OpenSSL's default CA file or directory: the system store on Debian & co."""
    paths = ssl.get_default_verify_paths()
    cafile = paths.cafile or paths.openssl_cafile
    capath = paths.capath or paths.openssl_capath
    if cafile and os.path.isfile(cafile):
        return cafile, None
    if capath and os.path.isdir(capath):
        return None, capath
    return None, None


def _new_store() -> crypto.X509Store:
    store = crypto.X509Store()
    store.set_flags(_X509_FLAG_NO_CHECK_TIME)
    return store


@functools.cache
def _directory_store(capath: str) -> crypto.X509Store:
    # OpenSSL looks certificates up in the directory when it needs them.
    store = _new_store()
    store.load_locations(None, capath)  # type: ignore[arg-type,unused-ignore]
    return store


# Built stores by file list, with the bundles they were built from: a cached
# bundle object stays the same while its file is unchanged.
_stores: dict[
    tuple[str, ...], tuple[tuple[pem_files.CaBundle, ...], crypto.X509Store]
] = {}


def _bundle_store(bundles: tuple[pem_files.CaBundle, ...]) -> crypto.X509Store:
    key = tuple(b.path for b in bundles)
    built = _stores.get(key)
    if built is not None and all(
        a is b for a, b in zip(built[0], bundles, strict=True)
    ):
        return built[1]
    store = _new_store()
    for bundle in bundles:
        for cert in bundle.certificates:
            store.add_cert(crypto.X509.from_cryptography(cert))
    _stores[key] = (bundles, store)
    return store


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ChainCheck:
    """What OpenSSL made of a chain, dates aside (see `validity_reason`)."""

    reason: str | None  # None when the chain leads to a trusted root
    message: str  # how tls.certificate words the problem; "" when none
    issuer_not_found: bool = False  # the chain stops at an issuer nobody has
    verified: tuple[x509.Certificate, ...] = ()  # leaf to root, when trusted
    # With the AIA answers: the certificate they gave that completes the
    # chain to a trusted root (the intermediate the server should send).
    missing_intermediate: x509.Certificate | None = None


def _verify(
    chain: Sequence[x509.Certificate],
    trust: TrustStore,
    extra: Sequence[x509.Certificate] = (),
) -> tuple[int, str, tuple[x509.Certificate, ...]]:
    """(OpenSSL error code or 0, its message, the verified chain)."""
    return _verify_in_store(trust.store, tuple(chain), tuple(extra))


# Every address of a server serves the same chain, and each is verified
# when probed and again when judged: the same question, answered once.
# OpenSSL's answer depends only on the store and the certificates (dates are
# judged by the callers), and a store is rebuilt, so a new key, when its
# files change.
@functools.lru_cache(maxsize=64)
def _verify_in_store(
    store: crypto.X509Store,
    chain: tuple[x509.Certificate, ...],
    extra: tuple[x509.Certificate, ...],
) -> tuple[int, str, tuple[x509.Certificate, ...]]:
    leaf = crypto.X509.from_cryptography(chain[0])
    intermediates = [crypto.X509.from_cryptography(c) for c in (*chain[1:], *extra)]
    context = crypto.X509StoreContext(store, leaf, intermediates)
    try:
        verified = context.get_verified_chain()
    except crypto.X509StoreContextError as e:
        code = int(e.errors[0]) if e.errors else -1
        message = str(e.errors[2]) if len(e.errors) > 2 else str(e)
        return code, message, ()
    return 0, "", tuple(c.to_cryptography() for c in verified)


def issuer_urls_to_fetch(
    chain: Sequence[x509.Certificate], trust: TrustStore
) -> tuple[str, ...] | None:
    """None when `chain` needs no AIA lookup (OpenSSL finds every issuer, or
    fails for another reason); else the AIA caIssuers URLs of its last
    certificate, empty when it names none."""
    if not chain:
        return None
    code, _, _ = _verify(chain, trust)
    if code not in _ISSUER_NOT_FOUND:
        return None
    return ca_issuer_urls(chain[-1])


def check_chain(
    chain: Sequence[x509.Certificate],
    trust: TrustStore,
    *,
    issuers: Sequence[IssuerFetch] | None = None,
) -> ChainCheck:
    """Verify `chain` (leaf first, as served) against `trust` with OpenSSL.

    `issuers`: what the AIA caIssuers URLs of the chain's last certificate
    gave (None: not looked up). When OpenSSL can't find an issuer, they tell
    a missing intermediate (the fetched certificate completes the chain to a
    trusted root) from an untrusted CA (no AIA, or it leads nowhere trusted).
    """
    code, message, verified = _verify(chain, trust)
    if not code:
        return ChainCheck(reason=None, message="", verified=verified)
    issuer_not_found = code in _ISSUER_NOT_FOUND or (
        code == _X509_ERR_SELF_SIGNED_CERT_IN_CHAIN
    )
    if code in _ISSUER_NOT_FOUND and issuers is not None:
        return _judge_with_issuers(chain, trust, issuers)
    reason, text = _classify_openssl_error(code, message, len(chain))
    return ChainCheck(reason=reason, message=text, issuer_not_found=issuer_not_found)


def _judge_with_issuers(
    chain: Sequence[x509.Certificate],
    trust: TrustStore,
    issuers: Sequence[IssuerFetch],
) -> ChainCheck:
    top = chain[-1]
    issuer = name_text(top.issuer)
    for fetch in issuers:
        for candidate in fetch.certificates:
            code, _, verified = _verify(chain, trust, [candidate])
            if not code:
                subject = name_text(candidate.subject)
                return ChainCheck(
                    reason=REASON_MISSING_INTERMEDIATE,
                    message=f"the server does not send the intermediate certificate "
                    f"{subject} (published at {fetch.url}); with it the chain leads "
                    "to a trusted root",
                    issuer_not_found=True,
                    missing_intermediate=candidate,
                )
    if not issuers:
        why = (
            "and the certificate names no AIA URL to fetch it from (every "
            "public CA does: if it is a public CA's intermediate after all, "
            "serve it after the leaf)"
        )
    elif any(f.certificates for f in issuers):
        why = "and the certificate published at its AIA URL does not lead to a trusted root either"
    else:
        # The AIA URL could not be read: we can't tell which it is, and a
        # public CA's intermediate is the likelier.
        errors = "; ".join(f"{f.url}: {f.error}" for f in issuers)
        return ChainCheck(
            reason=REASON_MISSING_INTERMEDIATE
            if len(chain) == 1
            else REASON_UNTRUSTED_ISSUER,
            message=f"the issuer {issuer} is neither sent nor trusted, and its "
            f"AIA URL could not be fetched ({errors}): either the intermediate "
            "is missing or the CA is not trusted",
            issuer_not_found=True,
        )
    return ChainCheck(
        reason=REASON_UNTRUSTED_ISSUER,
        message=f"the issuer {issuer} is not a trusted CA, {why}",
        issuer_not_found=True,
    )


def validity_reason(cert: x509.Certificate, now: float) -> str | None:
    """REASON_EXPIRED or REASON_NOT_YET_VALID at `now`; None inside the window."""
    if now > cert.not_valid_after_utc.timestamp():
        return REASON_EXPIRED
    if now < cert.not_valid_before_utc.timestamp():
        return REASON_NOT_YET_VALID
    return None


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class CertVerification:
    """Our verdict on a served chain, for `name`."""

    name: str
    reason: str | None  # None when valid; else one of CERT_REASONS
    problems: tuple[str, ...]  # every problem found, human-readable
    not_before: float
    not_after: float
    subject: str
    issuer: str
    san_names: tuple[str, ...]
    chain_length: int
    # The intermediate that the AIA lookup found missing, as an RFC 4514 name.
    missing_intermediate: str | None = None

    @property
    def valid(self) -> bool:
        return self.reason is None


# (for the leaf, for a certificate deeper in the chain)
_VALIDITY_WORDING = {
    REASON_EXPIRED: (
        "the certificate expired on {not_after}",
        "a certificate in the chain (depth {depth}) has expired",
    ),
    REASON_NOT_YET_VALID: (
        "the certificate is not valid before {not_before}",
        "a certificate in the chain (depth {depth}) is not valid yet",
    ),
}


def verify_chain(
    chain: Sequence[x509.Certificate],
    name: str,
    trust: TrustStore,
    *,
    now: float,
    issuers: Sequence[IssuerFetch] | None = None,
) -> CertVerification:
    """Verify `chain` (leaf first, as served) for `name` against `trust`, with
    every date judged at `now`; `issuers` as in `check_chain`."""
    return _verify_chain_once(
        tuple(chain),
        name,
        trust,
        now,
        tuple(issuers) if issuers is not None else None,
    )


# A run judges every address at the same `now`, and they serve the same
# chain: one verdict for all of them.
@functools.lru_cache(maxsize=32)
def _verify_chain_once(
    chain: tuple[x509.Certificate, ...],
    name: str,
    trust: TrustStore,
    now: float,
    issuers: tuple[IssuerFetch, ...] | None,
) -> CertVerification:
    leaf = chain[0]
    problems: list[tuple[str, str]] = []

    checked = check_chain(chain, trust, issuers=issuers)
    if checked.reason is not None:
        problems.append((checked.reason, checked.message))
    # The leaf's dates always matter; the rest of the chain's once it leads to
    # a root (as in OpenSSL, which checks them after building the chain).
    for depth, cert in enumerate([leaf, *checked.verified[1:]]):
        validity = validity_reason(cert, now)
        if validity is not None:
            wording = _VALIDITY_WORDING[validity][min(depth, 1)]
            problems.append(
                (
                    validity,
                    wording.format(
                        depth=depth,
                        not_before=_iso(cert.not_valid_before_utc.timestamp()),
                        not_after=_iso(cert.not_valid_after_utc.timestamp()),
                    ),
                )
            )

    dns_names, ip_names = san_names(leaf)
    sans = (dns_names + ip_names)[:MAX_SAN_NAMES]
    if not names_cover_host(dns_names + ip_names, name):
        shown = ", ".join(sans) if sans else "no subjectAltName"
        problems.append(
            (
                REASON_NAME_MISMATCH,
                f"the certificate is not valid for {name} (it covers: {shown})",
            )
        )

    problems.sort(key=lambda p: _REASON_PRIORITY[p[0]])
    return CertVerification(
        name=name,
        reason=problems[0][0] if problems else None,
        problems=tuple(msg for _, msg in problems),
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        subject=name_text(leaf.subject),
        issuer=name_text(leaf.issuer),
        san_names=sans,
        chain_length=len(chain),
        missing_intermediate=name_text(checked.missing_intermediate.subject)
        if checked.missing_intermediate is not None
        else None,
    )


def _classify_openssl_error(
    code: int, message: str, chain_length: int
) -> tuple[str, str]:
    if code == _X509_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        return REASON_SELF_SIGNED, "the certificate is self-signed"
    if code in _ISSUER_NOT_FOUND:
        # The issuer is neither served nor trusted. With only the leaf served,
        # the likeliest cause is a missing intermediate (cert.pem instead of
        # fullchain.pem); with a chain served, the chain leads to an unknown CA.
        if chain_length == 1:
            return (
                REASON_MISSING_INTERMEDIATE,
                "the server sends only its leaf certificate; the issuer is not a trusted root: the intermediate certificate is missing",
            )
        return (
            REASON_UNTRUSTED_ISSUER,
            f"the chain does not lead to a trusted root ({message})",
        )
    if code == _X509_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        return (
            REASON_UNTRUSTED_ISSUER,
            "the chain ends at a root CA that is not trusted",
        )
    return REASON_UNTRUSTED_ISSUER, f"the chain does not verify: {message}"


MAX_SAN_NAMES = 50  # shown and kept per certificate


def san_names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The leaf's subject alternative names: DNS names (lower-cased) and IP
    addresses, as text; empty when it has none or they do not parse."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return (), ()
    # The peer chooses these strings: escaped here, where they enter (an
    # escaped name covers no host, as the raw one would not either).
    dns_names = tuple(
        clean_line(str(n).lower()) for n in san.get_values_for_type(x509.DNSName)
    )
    ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return dns_names, ips


def name_matches(name: str, cert: x509.Certificate) -> bool:
    """RFC 6125 matching on subjectAltName only (no CN fallback, as in
    service_identity, which Twisted and so Synapse use)."""
    dns_names, ip_names = san_names(cert)
    return names_cover_host(dns_names + ip_names, name)


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return clean_line(str(attrs[0].value)) if attrs else ""


def name_text(name: x509.Name) -> str:
    """A certificate's subject or issuer as RFC 4514 text, escaped: RFC 4514
    escapes only its own specials (and NUL), not ANSI escapes or newlines."""
    return clean_line(name.rfc4514_string())


def cert_summary(cert: x509.Certificate) -> dict[str, Any]:
    """The federation tester's X509CertSummary fields."""
    der = cert.public_bytes(Encoding.DER)
    return {
        "SubjectCommonName": common_name(cert.subject),
        "IssuerCommonName": common_name(cert.issuer),
        "SHA256Fingerprint": _unpadded_b64(hashlib.sha256(der).digest()),
        "DNSNames": list(san_names(cert)[0][:MAX_SAN_NAMES]),
    }


def _unpadded_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii").rstrip("=")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def sni_for(name: str) -> bytes | None:
    """The SNI to send for `name`: none for IP literals (RFC 6066)."""
    if parse_ip(name, zone_ok=True) is not None:
        return None
    return bare_host(name).encode("idna")


# ---------------------------------------------------------------------------
# Connection creators


@attr.s(slots=True, auto_attribs=True)
class PeerChainRecorder:
    """Collects what the handshake showed (shared with the HTTP client)."""

    chain: tuple[x509.Certificate, ...] = ()
    protocol: str | None = None
    cipher: str | None = None
    verification: CertVerification | None = None


class CertificateRejected(Exception):
    """Our own verification refused the peer's chain."""

    def __init__(self, verification: CertVerification) -> None:
        super().__init__("; ".join(verification.problems))
        self.verification = verification


def _make_context() -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    # Accept old protocols so that we can *report* them instead of failing
    # with an opaque handshake error.
    ctx.set_min_proto_version(SSL.TLS1_VERSION)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    return ctx


def _record(conn: SSL.Connection, recorder: PeerChainRecorder) -> None:
    # (as_cryptography=True is newer than the type stubs.)
    chain: list[x509.Certificate] = conn.get_peer_cert_chain(as_cryptography=True) or []  # type: ignore[call-arg,assignment,unused-ignore]
    recorder.chain = tuple(chain[:MAX_CHAIN_LENGTH])
    recorder.protocol = conn.get_protocol_version_name()
    recorder.cipher = conn.get_cipher_name()


# Which creator made each live connection: the context, and so its info
# callback, is shared (building one costs more than a connection does).
_creators: weakref.WeakKeyDictionary[SSL.Connection, RecordingConnectionCreator] = (
    weakref.WeakKeyDictionary()
)


def _on_info(conn: SSL.Connection, where: int, ret: int) -> None:
    creator = _creators.get(conn)
    if creator is not None:
        creator._info_callback(conn, where, ret)


@functools.cache
def _shared_context() -> SSL.Context:
    ctx = _make_context()
    ctx.set_info_callback(_on_info)
    return ctx


@implementer(IOpenSSLClientConnectionCreator)
class RecordingConnectionCreator:
    """Handshakes with SNI `name`, accepts any chain and records it.

    With `verify_with`, the chain is verified right after the handshake and
    the connection is aborted (before any request is sent) if it fails, like
    Twisted's ClientTLSOptions does, but with our reasons.
    """

    def __init__(
        self,
        name: str,
        recorder: PeerChainRecorder,
        *,
        verify_with: TrustStore | None = None,
    ) -> None:
        self._name = name
        self._sni = sni_for(name)
        self._recorder = recorder
        self._trust = verify_with

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(_shared_context(), None)
        _creators[conn] = self
        conn.set_app_data(tlsProtocol)
        if self._sni is not None:
            conn.set_tlsext_host_name(self._sni)
        return conn

    def _info_callback(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        try:
            _record(conn, self._recorder)
            if self._trust is None:
                return
            if not self._recorder.chain:
                raise SSL.Error("the server sent no certificate")
            # The handshake just happened: its certificates are judged now.
            verification = verify_chain(
                self._recorder.chain, self._name, self._trust, now=time.time()
            )
            self._recorder.verification = verification
            if not verification.valid:
                raise CertificateRejected(verification)
        except Exception:
            # Exceptions can't cross OpenSSL's callback: hand them to Twisted.
            conn.get_app_data().failVerification(Failure())


# ---------------------------------------------------------------------------
# Handshake probe


class TlsProber(Protocol):
    def probe(
        self, ip: str, port: int, sni: str, timeout: float
    ) -> defer.Deferred[TlsProbeResult]:
        """Connect to ip:port and handshake with SNI `sni`. Never fails."""


def classify_connect_error(exc: BaseException) -> ConnectOutcome:
    if isinstance(exc, error.ConnectionRefusedError):
        return ConnectOutcome.REFUSED
    if isinstance(
        exc,
        (
            error.TCPTimedOutError,
            error.TimeoutError,
            defer.TimeoutError,
            defer.CancelledError,
            # What a cancelled endpoint.connect() fails with (our timeout, or
            # the run's deadline): not a CancelledError, so addTimeout keeps it.
            error.ConnectingCancelledError,
        ),
    ):
        return ConnectOutcome.TIMEOUT
    if isinstance(exc, (error.NoRouteError, error.ConnectError)):
        text = str(exc).lower()
        if "refused" in text:
            return ConnectOutcome.REFUSED
        if "timed out" in text or "timeout" in text:
            return ConnectOutcome.TIMEOUT
        return ConnectOutcome.UNREACHABLE
    return ConnectOutcome.ERROR


@implementer(IHandshakeListener)
class _HandshakeWatcher(TwistedProtocol):
    """Waits for the handshake; then closes the connection, or with `keep`
    leaves it open for a `KeptTlsConnection` to hand over."""

    def __init__(self, done: defer.Deferred[None], *, keep: bool = False) -> None:
        self._done = done
        self._keep = keep
        self.lost = False

    def handshakeCompleted(self) -> None:
        if not self._done.called:
            self._done.callback(None)
        if not self._keep:
            transport: Any = self.transport
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = True
        if not self._done.called:
            self._done.errback(reason)


class KeptTlsConnection:
    """A probe's connection after its handshake, kept open so that the
    requests to the same target ride it instead of handshaking again.

    `adopt` hands it to an HTTP client protocol once; `close` drops it if
    nobody took it."""

    def __init__(
        self, tls_protocol: Any, watcher: _HandshakeWatcher, recorder: PeerChainRecorder
    ) -> None:
        self._tls = tls_protocol
        self._watcher = watcher
        self.recorder = recorder
        self._taken = False

    @property
    def usable(self) -> bool:
        return not self._taken and not self._watcher.lost

    def adopt(self, factory: Any) -> Any:
        """The protocol `factory` builds, connected to this TLS connection
        (from now on it gets what the server sends)."""
        assert self.usable
        self._taken = True
        protocol = factory.buildProtocol(self._tls.getPeer())
        self._tls.wrappedProtocol = protocol
        protocol.makeConnection(self._tls)
        return protocol

    def close(self) -> None:
        if self.usable:
            self._taken = True
            self._tls.transport.abortConnection()


class TwistedTlsProber:
    """Probes with real sockets through the reactor."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def probe(
        self, ip: str, port: int, sni: str, timeout: float
    ) -> defer.Deferred[TlsProbeResult]:
        async def probe() -> TlsProbeResult:
            result, _ = await self._probe(ip, port, sni, timeout, keep=False)
            return result

        return defer.Deferred.fromCoroutine(probe())

    def probe_and_keep(
        self, ip: str, port: int, sni: str, timeout: float
    ) -> defer.Deferred[tuple[TlsProbeResult, KeptTlsConnection | None]]:
        """`probe`, and the connection itself when the handshake succeeded:
        the caller must `adopt` or `close` it."""
        return defer.Deferred.fromCoroutine(
            self._probe(ip, port, sni, timeout, keep=True)
        )

    async def _probe(
        self, ip: str, port: int, sni: str, timeout: float, *, keep: bool
    ) -> tuple[TlsProbeResult, KeptTlsConnection | None]:
        deadline = self._reactor.seconds() + timeout
        recorder = PeerChainRecorder()
        done: defer.Deferred[None] = defer.Deferred()
        # (Typed as Any: mypy can't see zope's @implementer.)
        creator: Any = RecordingConnectionCreator(sni, recorder)
        watcher = _HandshakeWatcher(done, keep=keep)
        watcher_factory: Any = Factory.forProtocol(lambda: watcher)
        factory: Any = TLSMemoryBIOFactory(creator, True, watcher_factory)
        endpoint_cls = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
        endpoint: Any = endpoint_cls(
            self._reactor, ip, port, timeout=max(1, int(timeout + 0.999))
        )
        base = TlsProbeResult(ip=ip, port=port, sni=sni, connect=ConnectOutcome.OK)
        started = self._reactor.seconds()
        connecting = endpoint.connect(factory)
        connecting.addTimeout(max(0.0, timeout), self._reactor)
        try:
            tls_protocol = await connecting
        except Exception as e:
            outcome = classify_connect_error(e)
            message = (
                "the TCP connect timed out"
                if isinstance(e, error.ConnectingCancelledError)
                else _describe(e)
            )
            return attr.evolve(base, connect=outcome, connect_error=message), None
        connect_ms = (self._reactor.seconds() - started) * 1000
        base = attr.evolve(base, connect_ms=round(connect_ms, 1))
        remaining = max(0.0, deadline - self._reactor.seconds())

        def _abort(d: defer.Deferred[None]) -> None:
            tls_protocol.transport.abortConnection()

        # Cancelling `waiting` (on timeout) must also drop the connection. The
        # connection's end arrives after that: it must not fire `waiting` again
        # (chainDeferred would raise AlreadyCalledError in the reactor).
        waiting: defer.Deferred[None] = defer.Deferred(_abort)

        def _settle(result: object) -> None:
            if waiting.called:
                pass
            elif isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(None)

        done.addBoth(_settle)
        waiting.addTimeout(remaining, self._reactor)
        try:
            await waiting
        except (defer.TimeoutError, defer.CancelledError):
            # Our own timeout, or the run's deadline cancelling the probe.
            return attr.evolve(
                base,
                handshake=HandshakeOutcome.TIMEOUT,
                handshake_error="the TLS handshake timed out",
            ), None
        except Exception as e:
            return attr.evolve(
                base,
                handshake=HandshakeOutcome.FAILED,
                handshake_error=_describe_tls_error(e),
            ), None
        result = attr.evolve(
            base,
            handshake=HandshakeOutcome.OK,
            protocol=recorder.protocol,
            cipher=recorder.cipher,
            chain=recorder.chain,
        )
        kept = KeptTlsConnection(tls_protocol, watcher, recorder) if keep else None
        return result, kept


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text[:300]


def _describe_tls_error(e: BaseException) -> str:
    if isinstance(e, SSL.Error):
        parts = []
        for item in e.args[0] if e.args and isinstance(e.args[0], list) else []:
            if isinstance(item, tuple) and len(item) == 3:
                parts.append(str(item[2]))
        if parts:
            return "TLS error: " + ", ".join(parts)[:300]
    if isinstance(e, error.ConnectionDone | error.ConnectionLost):
        return "the server closed the connection during the TLS handshake"
    return _describe(e)
