"""Tiny stdlib clients to check the lab itself from a test: a TCP connect
that names how it failed, and an HTTPS GET to an exact address with an
exact SNI/Host and the lab's CA."""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
from pathlib import Path

import attr


def tcp_connect(ip: str, port: int, timeout: float = 2.0) -> str:
    """ "ok", "refused", "timeout", "unreachable" or "error: ..."."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return "unreachable"
            return f"error: {e}"
    return "ok"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    tls_version: str | None


def https_get(
    ip: str,
    port: int,
    host: str,
    path: str,
    *,
    cafile: str | Path | None,
    timeout: float = 5.0,
    verify: bool = True,
) -> Response:
    """GET https://host:port/path, connecting to `ip`, with SNI and Host
    `host`; verified against `cafile` (only) unless `verify` is False.
    Raises ssl.SSLError / OSError when the connection or handshake fails."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((ip, port), timeout=timeout)
    try:
        tls = context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    connection.sock = tls
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return Response(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=response.read(),
            tls_version=tls.version(),
        )
    finally:
        connection.close()
