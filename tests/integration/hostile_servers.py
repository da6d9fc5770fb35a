"""Small misbehaving servers on loopback, for the hostile-network tests.

Each server is plain sockets in daemon threads, independent of the Twisted
reactor under test (a server that stalls can't stall the client). Every one
binds 127.0.0.0/8 only, polls a stop flag at least every `POLL_S`, closes
each connection after at most `max_lifetime_s`, and stops at `stop()` (also
as a context manager, and at interpreter exit).

    with HostileServer(http_routes({"/x": drip_headers()}), ip=ip, tls=ctx) as s:
        s.address  # "127.x.y.z:PORT"

A handler gets a `Conn` and does what it wants with it: the helpers below
build the usual hostile HTTP, TLS and DNS behaviours.
"""

from __future__ import annotations

import atexit
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping

import dns.flags
import dns.message
import dns.rcode

from .netlab.loopback import free_loopback_ip, host_port, is_loopback

POLL_S = 0.1
MAX_LIFETIME_S = 20.0  # no connection lives longer than this
MAX_REQUEST_BYTES = 64 * 1024
STOP_JOIN_S = 2.0
MAX_CONNECTIONS = 64
CHUNK = b"a" * 65536


class Conn:
    """One accepted connection (plain or TLS), with stop-aware helpers."""

    def __init__(self, sock: socket.socket, stop: threading.Event, deadline: float):
        self.sock = sock
        self._stop = stop
        self.deadline = deadline
        self.sent = 0

    @property
    def alive(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def send(self, data: bytes) -> bool:
        """Send all of `data`; False once the peer is gone or we must stop."""
        view = memoryview(data)
        while view:
            if not self.alive:
                return False
            try:
                n = self.sock.send(view)
            except (TimeoutError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                continue
            except OSError:
                return False
            self.sent += n
            view = view[n:]
        return True

    def recv(self, limit: int = 4096) -> bytes | None:
        """Some bytes; b"" at EOF; None when nothing came within POLL_S."""
        try:
            return self.sock.recv(limit)
        except (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError:
            return b""

    def read_request(self) -> str | None:
        """The request line's path, once the request head has arrived."""
        data = b""
        while self.alive and b"\r\n\r\n" not in data:
            chunk = self.recv()
            if chunk is None:
                continue
            if not chunk:
                return None
            data += chunk
            if len(data) > MAX_REQUEST_BYTES:
                return None
        if b"\r\n\r\n" not in data:
            return None
        parts = data.split(b"\r\n", 1)[0].split(b" ")
        return parts[1].decode("latin-1") if len(parts) >= 2 else None

    def wait(self, seconds: float) -> bool:
        """Sleep, reading and dropping what the peer sends; False if stopped."""
        end = min(time.monotonic() + seconds, self.deadline)
        while time.monotonic() < end:
            if self._stop.is_set():
                return False
            if self.recv() == b"":
                return False
        return self.alive

    def hold(self) -> None:
        """Keep the connection open, saying nothing, until stopped."""
        while self.wait(POLL_S):
            pass


Handler = Callable[[Conn], None]
HttpHandler = Callable[[Conn, str], None]


class HostileServer:
    """A TCP (optionally TLS) server on a loopback address running `handler`
    for each connection, each in its own thread."""

    def __init__(
        self,
        handler: Handler,
        *,
        ip: str | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        max_lifetime_s: float = MAX_LIFETIME_S,
    ) -> None:
        ip = ip or free_loopback_ip(ports=[port] if port else [])
        if not is_loopback(ip):
            raise ValueError(f"hostile servers bind loopback only, not {ip}")
        self._handler = handler
        self._tls = tls
        self._max_lifetime_s = max_lifetime_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((ip, port))
        self._listener.listen(MAX_CONNECTIONS)
        self._listener.settimeout(POLL_S)
        self.ip: str = ip
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        accept = threading.Thread(
            target=self._accept, name=f"hostile-{self.port}", daemon=True
        )
        self._threads.append(accept)
        _LIVE.add(self)
        accept.start()

    @property
    def address(self) -> str:
        return host_port(self.ip, self.port)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if len(self._conns) >= MAX_CONNECTIONS or self._stop.is_set():
                    sock.close()
                    continue
                self._conns.add(sock)
                self.connections += 1
                thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        sock: socket.socket = raw
        deadline = time.monotonic() + self._max_lifetime_s
        try:
            raw.settimeout(POLL_S)
            if self._tls is not None:
                sock = self._handshake(raw, deadline)
            self._handler(Conn(sock, self._stop, deadline))
        except (OSError, ValueError):
            pass  # the client went away, or the handshake failed
        finally:
            with self._lock:
                self._conns.discard(raw)
            try:
                sock.close()
            except OSError:
                pass

    def _handshake(self, raw: socket.socket, deadline: float) -> ssl.SSLSocket:
        assert self._tls is not None
        sock = self._tls.wrap_socket(
            raw, server_side=True, do_handshake_on_connect=False
        )
        while True:
            if self._stop.is_set() or time.monotonic() > deadline:
                raise OSError("stopped during the handshake")
            try:
                sock.do_handshake()
                return sock
            except (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(STOP_JOIN_S)
        _LIVE.discard(self)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# TLS contexts


def tls_context(
    cert_pem_chain: bytes,
    key_pem: bytes,
    *,
    only: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A server context; `only` pins one protocol version (e.g. TLS 1.0)."""
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if only is not None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = only
        ctx.maximum_version = only
    with tempfile.TemporaryDirectory() as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert_pem_chain)
        with open(key_path, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


# ---------------------------------------------------------------------------
# HTTP behaviours (each an HttpHandler: called once the request head arrived)


def http_routes(
    routes: Mapping[str, HttpHandler], default: HttpHandler | None = None
) -> Handler:
    """Read the request, then answer with the route for its path (else 404)."""

    def handle(conn: Conn) -> None:
        path = conn.read_request()
        if path is None:
            return
        route = routes.get(path.split("?", 1)[0]) or default or not_found()
        route(conn, path)

    return handle


def head(
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    *,
    reason: str = "OK",
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def respond(
    body: bytes,
    *,
    status: int = 200,
    content_type: str | None = "application/json",
    headers: Mapping[str, str] | None = None,
) -> HttpHandler:
    """A complete, well-formed answer, then the connection closes."""
    all_headers = {"Content-Length": str(len(body)), "Connection": "close"}
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    all_headers.update(headers or {})
    data = head(status, all_headers) + body

    def handle(conn: Conn, path: str) -> None:
        conn.send(data)

    return handle


def not_found() -> HttpHandler:
    return respond(b'{"errcode": "M_UNRECOGNIZED"}', status=404)


def redirect(location: str, status: int = 302) -> HttpHandler:
    return respond(
        b"", status=status, content_type=None, headers={"Location": location}
    )


def headers_then_nothing() -> HttpHandler:
    """A complete head promising a body, then silence."""

    def handle(conn: Conn, path: str) -> None:
        if conn.send(
            head(200, {"Content-Type": "application/json", "Content-Length": "100"})
        ):
            conn.hold()

    return handle


def drip_headers(interval_s: float = 1.0) -> HttpHandler:
    """Slowloris: a header line that never ends, one byte per interval."""

    def handle(conn: Conn, path: str) -> None:
        if not conn.send(b"HTTP/1.1 200 OK\r\nX-Slow: "):
            return
        while conn.send(b"a") and conn.wait(interval_s):
            pass

    return handle


def endless_headers(*, folded: bool = False) -> HttpHandler:
    """A response head that never ends, as fast as the client reads: distinct
    1 KiB header lines, or (`folded`) one header continued by endless
    continuation lines."""
    filler = b"h" * 1000

    def handle(conn: Conn, path: str) -> None:
        if not conn.send(b"HTTP/1.1 200 OK\r\nX-Start: 1\r\n"):
            return
        i = 0
        while True:
            line = b" " + filler if folded else b"X-Flood-%d: " % i + filler
            if not conn.send(line + b"\r\n"):
                return
            i += 1

    return handle


def drip_body(interval_s: float = 1.0) -> HttpHandler:
    """Slowloris: a valid head, then the body one byte per interval."""

    def handle(conn: Conn, path: str) -> None:
        if not conn.send(
            head(200, {"Content-Type": "application/json", "Content-Length": "1000"})
            + b"{"
        ):
            return
        while conn.send(b" ") and conn.wait(interval_s):
            pass

    return handle


def endless_body(*, chunked: bool = False, length: int | None = None) -> HttpHandler:
    """A body that never ends, as fast as the client reads: no length and
    "Connection: close" (default), chunked, or a huge Content-Length."""
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    elif length is not None:
        headers["Content-Length"] = str(length)
    piece = (b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n") if chunked else CHUNK

    def handle(conn: Conn, path: str) -> None:
        if not conn.send(head(200, headers) + (b"%x\r\n" % 14 if chunked else b"")):
            return
        if not conn.send(b'{"m.server": "' + (b"\r\n" if chunked else b"")):
            return
        while conn.send(piece):
            pass

    return handle


def close_mid_body() -> HttpHandler:
    """Content-Length 1000, then 100 bytes, then the connection closes."""

    def handle(conn: Conn, path: str) -> None:
        conn.send(
            head(200, {"Content-Type": "application/json", "Content-Length": "1000"})
            + b'{"m.server": "'
            + b"a" * 86
        )

    return handle


def close_mid_headers() -> HttpHandler:
    def handle(conn: Conn, path: str) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: applic")

    return handle


# ---------------------------------------------------------------------------
# TLS-level behaviours (raw Handlers, for a server without a TLS context)


def stall() -> Handler:
    """Accept, then never say anything (a TLS handshake that stalls)."""
    return lambda conn: conn.hold()


def plain_http() -> Handler:
    """An HTTP server where TLS was expected: answers the ClientHello with
    HTTP's "400 Bad Request", as nginx does without `ssl`."""

    def handle(conn: Conn) -> None:
        while conn.alive:
            data = conn.recv()
            if data is None:
                continue
            if data:
                conn.send(
                    head(
                        400,
                        {"Content-Length": "11", "Connection": "close"},
                        reason="Bad Request",
                    )
                    + b"Bad Request"
                )
            return

    return handle


def garbage(size: int = 4096) -> Handler:
    """Random bytes in answer to the ClientHello, then silence."""

    def handle(conn: Conn) -> None:
        if conn.send(os.urandom(size)):
            conn.hold()

    return handle


# ---------------------------------------------------------------------------
# DNS over UDP only (no TCP listener: a TCP retry is refused)


DnsHandler = Callable[[dns.message.Message], bytes | None]


class UdpDnsServer:
    """Answers each UDP query with `handler(query)` (None: stay silent)."""

    def __init__(self, handler: DnsHandler, *, ip: str | None = None) -> None:
        ip = ip or free_loopback_ip(ports=[])
        if not is_loopback(ip):
            raise ValueError(f"hostile servers bind loopback only, not {ip}")
        self._handler = handler
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((ip, 0))
        self._sock.settimeout(POLL_S)
        self.ip: str = ip
        self.port: int = self._sock.getsockname()[1]
        self.queries = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        _LIVE.add(self)
        self._thread.start()

    @property
    def address(self) -> str:
        return host_port(self.ip, self.port)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            try:
                reply = self._handler(dns.message.from_wire(data))
            except Exception:
                continue
            if reply is not None:
                try:
                    self._sock.sendto(reply, peer)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_JOIN_S)
        self._sock.close()
        _LIVE.discard(self)

    def __enter__(self) -> UdpDnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def truncated_reply(query: dns.message.Message) -> bytes:
    """An empty answer with the TC bit: "ask again over TCP"."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC
    return response.to_wire()


def garbage_reply(query: dns.message.Message) -> bytes:
    """Bytes that are not a DNS message for this query."""
    return query.id.to_bytes(2, "big") + os.urandom(64)


def servfail_reply(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire()


_LIVE: set[HostileServer | UdpDnsServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()
