"""TLS: the trust store, our own chain verification, and a handshake probe.

We verify chains ourselves (rather than letting the handshake fail) so that a
rejected certificate comes with one precise reason a human can act on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import time
from collections.abc import Sequence
from typing import Any, Protocol

import attr
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
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

from synapse_fedhealth.net.results import ConnectOutcome as ConnectOutcome
from synapse_fedhealth.net.results import HandshakeOutcome
from synapse_fedhealth.net.results import TlsProbeResult as TlsProbeResult

# `details.reason` values of tls.certificate (SPEC 4.3): keep these exact.
REASON_EXPIRED = "expired"
REASON_NOT_YET_VALID = "not_yet_valid"
REASON_SELF_SIGNED = "self_signed"
REASON_UNTRUSTED_ISSUER = "untrusted_issuer"
REASON_MISSING_INTERMEDIATE = "missing_intermediate"
REASON_NAME_MISMATCH = "name_mismatch"
CERT_REASONS = (
    REASON_EXPIRED,
    REASON_NOT_YET_VALID,
    REASON_SELF_SIGNED,
    REASON_UNTRUSTED_ISSUER,
    REASON_MISSING_INTERMEDIATE,
    REASON_NAME_MISMATCH,
)
# When several problems apply, the most fundamental is the reason.
_REASON_PRIORITY = {r: i for i, r in enumerate(CERT_REASONS)}
_REASON_PRIORITY[REASON_SELF_SIGNED] = -1

# OpenSSL X509_V_ERR_* codes we classify.
_X509_ERR_UNABLE_TO_GET_ISSUER_CERT = 2
_X509_ERR_CERT_NOT_YET_VALID = 9
_X509_ERR_CERT_HAS_EXPIRED = 10
_X509_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_X509_ERR_SELF_SIGNED_CERT_IN_CHAIN = 19
_X509_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_X509_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21

# A hostile server may send a huge chain; only this many certificates are kept.
MAX_CHAIN_LENGTH = 10


class TrustStore:
    """The roots peers use: CA bundle files, or the system store.

    Files are read once, when the store is built; every certificate in each
    PEM file is trusted.
    """

    def __init__(self, ca_files: Sequence[str] = ()) -> None:
        self.ca_files = tuple(ca_files)
        self._store = crypto.X509Store()
        if not self.ca_files:
            # OpenSSL's default locations: the system store on Debian & co.
            paths = ssl.get_default_verify_paths()
            cafile = paths.cafile or paths.openssl_cafile
            capath = paths.capath or paths.openssl_capath
            if cafile and os.path.isfile(cafile):
                self._store.load_locations(cafile)
            elif capath and os.path.isdir(capath):
                self._store.load_locations(None, capath)  # type: ignore[arg-type,unused-ignore]
            self.description = "the system trust store"
            return
        for path in self.ca_files:
            with open(path, "rb") as f:
                pem = f.read()
            certs = x509.load_pem_x509_certificates(pem)
            for cert in certs:
                self._store.add_cert(crypto.X509.from_cryptography(cert))
        self.description = "the CA file(s) " + ", ".join(self.ca_files)

    @property
    def store(self) -> crypto.X509Store:
        return self._store


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

    @property
    def valid(self) -> bool:
        return self.reason is None


def verify_chain(
    chain: Sequence[x509.Certificate],
    name: str,
    trust: TrustStore,
    *,
    now: float | None = None,
) -> CertVerification:
    """Verify `chain` (leaf first, as served) for `name` against `trust`."""
    if now is None:
        now = time.time()
    leaf = chain[0]
    problems: list[tuple[str, str]] = []

    not_before = leaf.not_valid_before_utc.timestamp()
    not_after = leaf.not_valid_after_utc.timestamp()
    if now > not_after:
        problems.append(
            (REASON_EXPIRED, f"the certificate expired on {_iso(not_after)}")
        )
    elif now < not_before:
        problems.append(
            (
                REASON_NOT_YET_VALID,
                f"the certificate is not valid before {_iso(not_before)}",
            )
        )

    chain_problem = _chain_problem(chain, trust)
    if chain_problem is not None:
        problems.append(chain_problem)

    sans = _san_names(leaf)
    if not name_matches(name, leaf):
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
        not_before=not_before,
        not_after=not_after,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        san_names=sans,
        chain_length=len(chain),
    )


def _chain_problem(
    chain: Sequence[x509.Certificate], trust: TrustStore
) -> tuple[str, str] | None:
    leaf = crypto.X509.from_cryptography(chain[0])
    intermediates = [crypto.X509.from_cryptography(c) for c in chain[1:]]
    try:
        crypto.X509StoreContext(trust.store, leaf, intermediates).verify_certificate()
    except crypto.X509StoreContextError as e:
        code = int(e.errors[0]) if e.errors else -1
        depth = int(e.errors[1]) if len(e.errors) > 1 else 0
        message = str(e.errors[2]) if len(e.errors) > 2 else str(e)
        return _classify_openssl_error(code, depth, message, len(chain))
    return None


def _classify_openssl_error(
    code: int, depth: int, message: str, chain_length: int
) -> tuple[str, str]:
    if code == _X509_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        return REASON_SELF_SIGNED, "the certificate is self-signed"
    if code == _X509_ERR_CERT_HAS_EXPIRED:
        return REASON_EXPIRED, f"a certificate in the chain (depth {depth}) has expired"
    if code == _X509_ERR_CERT_NOT_YET_VALID:
        return (
            REASON_NOT_YET_VALID,
            f"a certificate in the chain (depth {depth}) is not valid yet",
        )
    if code in (
        _X509_ERR_UNABLE_TO_GET_ISSUER_CERT,
        _X509_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        _X509_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
    ):
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


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return ()
    names: list[str] = [str(n).lower() for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(names[:50])


def name_matches(name: str, cert: x509.Certificate) -> bool:
    """RFC 6125 matching on subjectAltName only (no CN fallback, as in
    service_identity, which Twisted and so Synapse use)."""
    name = name.lower().rstrip(".")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        return any(ip == other for other in san.get_values_for_type(x509.IPAddress))
    for pattern in san.get_values_for_type(x509.DNSName):
        if _dns_name_matches(name, pattern.lower().rstrip(".")):
            return True
    return False


def _dns_name_matches(name: str, pattern: str) -> bool:
    if not pattern.startswith("*."):
        return name == pattern
    # A wildcard covers exactly one left-most label.
    head, _, rest = name.partition(".")
    return bool(head) and rest == pattern[2:]


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def cert_summary(cert: x509.Certificate) -> dict[str, Any]:
    """The federation tester's X509CertSummary fields."""
    der = cert.public_bytes(Encoding.DER)
    return {
        "SubjectCommonName": common_name(cert.subject),
        "IssuerCommonName": common_name(cert.issuer),
        "SHA256Fingerprint": _unpadded_b64(hashlib.sha256(der).digest()),
        "DNSNames": [n for n in _san_names(cert) if not _is_ip(n)],
    }


def _unpadded_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii").rstrip("=")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def sni_for(name: str) -> bytes | None:
    """The SNI to send for `name`: none for IP literals (RFC 6066)."""
    bare = name.strip("[]")
    if _is_ip(bare):
        return None
    return bare.encode("idna")


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
        self._ctx = _make_context()
        self._ctx.set_info_callback(self._info_callback)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
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
            verification = verify_chain(self._recorder.chain, self._name, self._trust)
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
    def __init__(self, done: defer.Deferred[None]) -> None:
        self._done = done

    def handshakeCompleted(self) -> None:
        if not self._done.called:
            self._done.callback(None)
        transport: Any = self.transport
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self._done.called:
            self._done.errback(reason)


class TwistedTlsProber:
    """Probes with real sockets through the reactor."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def probe(
        self, ip: str, port: int, sni: str, timeout: float
    ) -> defer.Deferred[TlsProbeResult]:
        return defer.Deferred.fromCoroutine(self._probe(ip, port, sni, timeout))

    async def _probe(
        self, ip: str, port: int, sni: str, timeout: float
    ) -> TlsProbeResult:
        deadline = self._reactor.seconds() + timeout
        recorder = PeerChainRecorder()
        done: defer.Deferred[None] = defer.Deferred()
        # (Typed as Any: mypy can't see zope's @implementer.)
        creator: Any = RecordingConnectionCreator(sni, recorder)
        watcher_factory: Any = Factory.forProtocol(lambda: _HandshakeWatcher(done))
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
            return attr.evolve(base, connect=outcome, connect_error=message)
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
            )
        except Exception as e:
            return attr.evolve(
                base,
                handshake=HandshakeOutcome.FAILED,
                handshake_error=_describe_tls_error(e),
            )
        return attr.evolve(
            base,
            handshake=HandshakeOutcome.OK,
            protocol=recorder.protocol,
            cipher=recorder.cipher,
            chain=recorder.chain,
        )


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
