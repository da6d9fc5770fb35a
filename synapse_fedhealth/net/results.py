"""The value types of the I/O layer: what a DNS query, an HTTPS fetch and a
TLS probe observed.

No Twisted here, so the judges read observations without importing the I/O
modules that make them (`net/dns.py`, `net/http.py`, `net/tls.py`).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from typing import Any

import attr
from cryptography import x509

if sys.version_info >= (3, 11):
    from enum import StrEnum as StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, enum.Enum):
        """A str enum whose members format as their value (3.11's StrEnum)."""

        __str__ = str.__str__
        __format__ = str.__format__


# ---------------------------------------------------------------------------
# DNS


class DnsOutcome(enum.Enum):
    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NO_ANSWER = "no_answer"  # the name exists, but has no record of this type
    SERVFAIL = "servfail"  # includes REFUSED and every server failing
    TIMEOUT = "timeout"
    ERROR = "error"  # a malformed name or an unexpected failure

    @property
    def is_negative(self) -> bool:
        """The name has no such record (as opposed to "we could not find out")."""
        return self in (DnsOutcome.NXDOMAIN, DnsOutcome.NO_ANSWER)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # lower case, no trailing dot; "." means "no service here"

    def to_json(self) -> dict[str, Any]:
        return {
            "priority": self.priority,
            "weight": self.weight,
            "port": self.port,
            "target": self.target,
        }


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class DnsResult:
    """The outcome of one query. `addresses` for A/AAAA, `srv` for SRV."""

    qname: str
    rdtype: str
    outcome: DnsOutcome
    addresses: tuple[str, ...] = ()
    srv: tuple[SrvRecord, ...] = ()
    # (alias, canonical target) pairs followed while answering.
    cnames: tuple[tuple[str, str], ...] = ()
    error: str = ""
    truncated: bool = False  # more records were served than we keep

    def describe(self) -> str:
        if self.outcome is DnsOutcome.ANSWER:
            return "answer"
        if self.outcome is DnsOutcome.TIMEOUT:
            return "timed out"
        if self.outcome is DnsOutcome.SERVFAIL:
            return "SERVFAIL" + (f" ({self.error})" if self.error else "")
        if self.outcome is DnsOutcome.NXDOMAIN:
            return "NXDOMAIN (no such name)"
        if self.outcome is DnsOutcome.NO_ANSWER:
            return f"no {self.rdtype} record"
        return "error: " + self.error

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome.value}
        if self.addresses:
            out["addresses"] = list(self.addresses)
        if self.srv:
            out["records"] = [r.to_json() for r in self.srv]
        if self.cnames:
            out["cnames"] = [list(pair) for pair in self.cnames]
        if self.error:
            out["error"] = self.error
        if self.truncated:
            out["truncated"] = True
        return out


# ---------------------------------------------------------------------------
# HTTPS


class ProbeError(StrEnum):
    """`HttpResult.error`: why a fetch produced no usable answer."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    NO_ADDRESS = "no_address"
    TLS = "tls"  # handshake failed (garbage, protocol mismatch, plain HTTP)
    CERTIFICATE = "certificate"  # our verification refused the chain; see tls_reason
    TOO_LARGE = "too_large"
    # More header lines or header bytes than MAX_RESPONSE_HEADERS /
    # MAX_RESPONSE_HEAD_BYTES (net/http.py): the response head never ended.
    HEADERS_TOO_LARGE = "headers_too_large"
    TRUNCATED = "truncated"  # the connection closed in the middle of the body
    # A redirect from a public address to a private one (loopback, RFC 1918,
    # CGNAT, ULA): not followed, as peers refuse those addresses.
    PRIVATE_REDIRECT = "private_redirect"
    REDIRECT_LOOP = "redirect_loop"
    REDIRECT_SCHEME = "redirect_scheme"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BAD_REDIRECT = "bad_redirect"
    PROTOCOL = "protocol"  # not HTTP, or a malformed response
    ERROR = "error"


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class RedirectHop:
    url: str
    status: int
    location: str
    # The hop's response headers (lower-case names, repeated values kept):
    # browsers check CORS on every cross-origin hop, not only the last.
    headers: Mapping[str, tuple[str, ...]] = attr.ib(factory=dict)

    def header_values(self, name: str) -> tuple[str, ...]:
        return self.headers.get(name.lower(), ())

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "location": self.location}


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class HttpResult:
    url: str  # the first URL requested
    host_header: str
    sni: str
    final_url: str = ""
    connected_to: str | None = None  # "ip:port" of the last hop
    status: int | None = None
    headers: Mapping[str, tuple[str, ...]] = attr.ib(factory=dict)  # lower-case names
    body: bytes = b""
    redirects: tuple[RedirectHop, ...] = ()
    error: ProbeError | None = None
    error_message: str = ""
    tls_reason: str | None = None  # a tls.CERT_REASONS value with ERR_CERTIFICATE
    cert_not_after: float | None = None  # leaf of the last TLS connection
    elapsed_ms: float | None = None

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    @property
    def content_type(self) -> str | None:
        value = self.header("content-type")
        return value.split(";", 1)[0].strip().lower() if value is not None else None

    def request_details(self) -> dict[str, Any]:
        """What every network check records (SPEC 3)."""
        out: dict[str, Any] = {
            "url": self.url,
            "host_header": self.host_header,
            "sni": self.sni,
        }
        if self.connected_to:
            out["connected_to"] = self.connected_to
        if self.redirects:
            out["redirects"] = [h.to_json() for h in self.redirects]
        if self.status is not None:
            out["http_status"] = self.status
        if self.error:
            out["error"] = self.error_message or self.error
        return out


# ---------------------------------------------------------------------------
# TLS


class ConnectOutcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    ERROR = "error"


class HandshakeOutcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class TlsProbeResult:
    ip: str
    port: int
    sni: str
    connect: ConnectOutcome
    connect_error: str = ""
    connect_ms: float | None = None
    handshake: HandshakeOutcome | None = None  # None: not attempted
    handshake_error: str = ""
    protocol: str | None = None
    cipher: str | None = None
    chain: tuple[x509.Certificate, ...] = ()
