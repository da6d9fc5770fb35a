"""The echo resource `GET /_synapse/client/fedhealth/echo/<nonce>`.

Our own run sends this request through the public path (DNS, reverse proxy)
and the resource answers with what reached Synapse: the forwarded headers,
Host, the TCP peer and which listener received it. `proxy.forwarded_headers`
judges that answer (synapse_fedhealth/checks/forwarded.py).

No authentication: the nonce is the capability, and the answer reveals
nothing but the caller's own request. Nonces are HMAC-signed with an expiry,
so a process that did not issue one (a worker behind the same proxy) can
still check it when all processes share the secret (derived from the signing
key, which every process loads). Only nonces issued by this process are
recorded, in a bounded book, so a stranger can't make the server store
anything: an unknown nonce is a 404 and nothing more.

A nonce is good for one request per process (a replay is a 404), and the
answer is signed: HMAC-SHA256 over the nonce and the exact body, keyed by the
nonce secret, in the `X-Fedhealth-Echo-MAC` header. So the check believes an
answer only if this homeserver made it, not any server that mimics one.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from synapse.api.errors import NotFoundError
from synapse.http.server import DirectServeJsonResource, respond_with_json_bytes
from twisted.web import http

from synapse_fedhealth.checks.forwarded import (
    ECHO_MAC_HEADER,
    ECHO_PATH,
    MAX_HEADER_CHARS,
    EchoRecord,
)

if TYPE_CHECKING:
    from synapse.http.site import SynapseRequest

__all__ = ["ECHO_PATH", "EchoResource", "NonceBook", "echo_record_of"]

ECHO_NONCE_TTL_S = 120.0  # a run lasts seconds; two minutes is plenty
MAX_NONCES = 64  # issued nonces kept (with their records) per process
MAX_NONCE_CHARS = 128  # longer path segments are rejected before any work
_MAC_HEX_CHARS = 32  # 128 bits of HMAC-SHA256
_SECRET_LABEL = b"synapse-fedhealth echo nonce v1"
# Keeps an answer's MAC from ever equalling a nonce's (same secret).
_ANSWER_LABEL = b"synapse-fedhealth echo answer v1\n"


def secret_from_signing_key(seed: bytes) -> bytes:
    """A nonce secret every process of this homeserver derives alike (they all
    load the same signing key), without revealing the key."""
    return hmac.new(seed, _SECRET_LABEL, hashlib.sha256).digest()


class NonceBook:
    """Nonces issued by our runs, and what their echo requests recorded.

    A nonce is `<expiry>.<random>.<mac>`: checkable without state, bounded
    in time. The book holds at most `max_nonces` (oldest dropped first).
    """

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        ttl_s: float = ECHO_NONCE_TTL_S,
        max_nonces: int = MAX_NONCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._ttl_s = ttl_s
        self._max_nonces = max_nonces
        self._clock = clock
        # nonce -> record (None until its echo request arrives)
        self._book: collections.OrderedDict[str, EchoRecord | None] = (
            collections.OrderedDict()
        )
        # Valid nonces already answered here (issued by any process), oldest
        # first; kept until they expire, at most `max_nonces`.
        self._used: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._book)

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256)
        return digest.hexdigest()[:_MAC_HEX_CHARS]

    def _expire(self, now: float) -> None:
        for nonce in [n for n in self._book if self._expiry(n) <= now]:
            del self._book[nonce]

    @staticmethod
    def _expiry(nonce: str) -> float:
        try:
            return float(int(nonce.split(".", 1)[0]))
        except ValueError:
            return 0.0

    def issue(self) -> str:
        now = self._clock()
        self._expire(now)
        payload = f"{int(now + self._ttl_s)}.{secrets.token_hex(12)}"
        nonce = f"{payload}.{self._mac(payload)}"
        self._book[nonce] = None
        while len(self._book) > self._max_nonces:
            self._book.popitem(last=False)
        return nonce

    def is_valid(self, nonce: str) -> bool:
        """Signed with our secret and not expired (no state needed)."""
        if len(nonce) > MAX_NONCE_CHARS or not nonce.isascii():
            return False
        payload, _, mac = nonce.rpartition(".")
        if not payload or not hmac.compare_digest(mac, self._mac(payload)):
            return False
        return self._expiry(nonce) > self._clock()

    def claim(self, nonce: str) -> bool:
        """Valid and not used before in this process: True, once."""
        if not self.is_valid(nonce):
            return False
        now = self._clock()
        for used in [n for n in self._used if self._expiry(n) <= now]:
            del self._used[used]
        if nonce in self._used:
            return False
        self._used[nonce] = None
        while len(self._used) > self._max_nonces:
            self._used.popitem(last=False)
        return True

    def used_count(self) -> int:
        return len(self._used)

    def _answer_mac(self, nonce: str, body: bytes) -> str:
        message = _ANSWER_LABEL + nonce.encode("ascii") + b"\n" + body
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign_answer(self, nonce: str, answer: object) -> tuple[bytes, str]:
        """The echo answer's body (compact JSON) and its MAC."""
        body = json.dumps(answer, separators=(",", ":"), sort_keys=True).encode("ascii")
        return body, self._answer_mac(nonce, body)

    def verify_answer(self, nonce: str, body: bytes, mac: str) -> bool:
        """Did a process with our secret sign exactly `body` for `nonce`?"""
        if len(nonce) > MAX_NONCE_CHARS or not nonce.isascii() or not mac.isascii():
            return False
        return hmac.compare_digest(mac, self._answer_mac(nonce, body))

    def record(self, nonce: str, record: EchoRecord) -> bool:
        """Keep `record` if `nonce` is one this process issued and still holds."""
        if nonce not in self._book or not self.is_valid(nonce):
            return False
        self._book[nonce] = record
        return True

    def recorded(self, nonce: str) -> EchoRecord | None:
        """What the echo request with `nonce` recorded here, if it reached us."""
        return self._book.get(nonce)


def _header(request: SynapseRequest, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    # Several headers of one name are one comma-separated list (RFC 9110).
    text = ", ".join(v.decode("latin-1") for v in values)
    return text[:MAX_HEADER_CHARS]


def _address_text(address: Any) -> str | None:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if isinstance(host, str):
        host_text = f"[{host}]" if ":" in host else host
        return f"{host_text}:{port}" if isinstance(port, int) else host_text
    name = getattr(address, "name", None)
    if isinstance(name, bytes | str):
        return "unix:" + (
            name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        )
    return None


def echo_record_of(request: SynapseRequest) -> EchoRecord:
    """What reached Synapse, read from the request the way Synapse reads it
    (synapse/http/site.py, 1.163): `SynapseSite` builds an
    `XForwardedForRequest` exactly when the listener has `x_forwarded: true`,
    and tags requests with `site_tag` (the listener's `tag`, else its port)."""
    from synapse.http.site import XForwardedForRequest

    try:
        peer = _address_text(request.channel.getPeer())
    except Exception:  # a transport without a peer (tests, odd transports)
        peer = None
    try:
        local = request.getHost()  # type: ignore[no-untyped-call]
        port = getattr(local, "port", None)
        listener_port = port if isinstance(port, int) else None
    except Exception:
        listener_port = None
    site = getattr(request, "synapse_site", None)
    tag = getattr(site, "site_tag", None)
    try:
        # The transport itself, not XForwardedForRequest's X-Forwarded-Proto view.
        tls = bool(http.Request.isSecure(request))
    except Exception:
        tls = False
    return EchoRecord(
        x_forwarded_for=_header(request, b"X-Forwarded-For"),
        x_forwarded_proto=_header(request, b"X-Forwarded-Proto"),
        x_forwarded_host=_header(request, b"X-Forwarded-Host"),
        forwarded=_header(request, b"Forwarded"),
        host=_header(request, b"Host"),
        peer=peer,
        tls=tls,
        listener_port=listener_port,
        listener_tag=tag[:MAX_HEADER_CHARS] if isinstance(tag, str) else None,
        listener_x_forwarded=isinstance(request, XForwardedForRequest),
    )


def nonce_from_path(postpath: list[bytes]) -> str | None:
    """The one path segment after the resource's own path."""
    segments = [s for s in postpath if s]
    if len(segments) != 1 or len(segments[0]) > MAX_NONCE_CHARS:
        return None
    try:
        return segments[0].decode("ascii")
    except UnicodeDecodeError:
        return None


class EchoResource(DirectServeJsonResource):
    """Answers a valid echo request with its `EchoRecord`; anything else 404."""

    # Serve `<path>/<nonce>` without children of our own.
    isLeaf = True

    def __init__(self, nonces: NonceBook) -> None:
        super().__init__()
        self._nonces = nonces

    async def _async_render_GET(self, request: SynapseRequest) -> tuple[int, Any]:
        nonce = nonce_from_path(list(request.postpath or []))
        if nonce is None or not self._nonces.claim(nonce):
            raise NotFoundError("Unknown, expired or used echo nonce")
        record = echo_record_of(request)
        self._nonces.record(nonce, record)
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        return 200, record.to_json()

    def _send_response(
        self, request: SynapseRequest, code: int, response_object: Any
    ) -> None:
        """Send the answer as bytes we sign: the MAC covers exactly what the
        check receives (Synapse would encode the JSON after we could sign it)."""
        nonce = nonce_from_path(list(request.postpath or []))
        if nonce is None:  # only answers to a claimed nonce come here
            super()._send_response(request, code, response_object)
            return
        body, mac = self._nonces.sign_answer(nonce, response_object)
        request.setHeader(ECHO_MAC_HEADER.encode("ascii"), mac.encode("ascii"))  # type: ignore[no-untyped-call]
        respond_with_json_bytes(request, code, body, send_cors=True)
