"""Hostile-network scenarios for the engine, shared by the tests
(`test_hostile_*.py`) and `benchmarks/hostile_bounds.py`.

Each scenario builds a small world on loopback (a DNS server for a fake
`.test` zone, misbehaving HTTP/TLS servers from `hostile_servers`), runs
`NetworkChecker` against it once, and measures:

- wall time (time.monotonic) of the whole run;
- the peak of Python memory allocated during the run (tracemalloc) above
  what was allocated when it started;
- every log record at WARNING or above, and every error Twisted logs
  (an unhandled error in a Deferred, say);
- whether Synapse's logcontext was intact after the run (started with
  run_in_background, awaited with make_deferred_yieldable, as the module
  does).

Nothing here sends a packet outside 127.0.0.0/8.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attr
import trustme
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from synapse_fedhealth.checks.federation import KEYS_PATH, VERSION_PATH
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.network_checker import NetworkChecker, NetworkFindings
from synapse_fedhealth.report import CheckResult, Report, Status
from synapse_fedhealth.settings import RunSettings
from synapse_fedhealth.signing import canonical_json
from synapse_fedhealth.wiring import ProcessIO

from .hostile_servers import (
    Handler,
    HostileServer,
    HttpHandler,
    UdpDnsServer,
    close_mid_body,
    close_mid_headers,
    drip_body,
    drip_headers,
    endless_body,
    endless_headers,
    garbage,
    garbage_reply,
    headers_then_nothing,
    http_routes,
    plain_http,
    redirect,
    respond,
    servfail_reply,
    stall,
    tls_context,
    truncated_reply,
)
from .netlab.dns_server import DnsServer, many_a, srv
from .netlab.loopback import free_loopback_ip

WK_PATH = "/.well-known/matrix/server"
DEFAULT_TIMEOUT_S = 3.0
# SPEC 5: a run ends within `timeout`; the tests allow this much on top for
# a loaded CI machine (the reactor's own scheduling, thread wake-ups).
TIME_SLACK_S = 1.0
MEMORY_BOUND_BYTES = 5 * 1024 * 1024  # peak Python allocations above baseline

_CA_LOCK = threading.Lock()
_CA: tuple[trustme.CA, str] | None = None


def shared_ca() -> tuple[trustme.CA, str]:
    """One test CA per process, and its PEM file (removed at exit)."""
    global _CA
    with _CA_LOCK:
        if _CA is None:
            ca = trustme.CA()
            fd, path = tempfile.mkstemp(prefix="hostile-ca-", suffix=".pem")
            os.close(fd)
            ca.cert_pem.write_to_path(path)
            import atexit

            atexit.register(os.unlink, path)
            _CA = (ca, path)
        return _CA


class HostileLab:
    """The world of one scenario: a DNS server and hostile servers."""

    def __init__(self) -> None:
        self.ca, self.ca_file = shared_ca()
        self.dns = DnsServer().start()
        self.dns_address = self.dns.address
        self._servers: list[HostileServer | UdpDnsServer] = []

    def tls(self, *names: str, only: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        leaf = self.ca.issue_cert(*names)
        return tls_context(
            b"".join(p.bytes() for p in leaf.cert_chain_pems),
            leaf.private_key_pem.bytes(),
            only=only,
        )

    def serve(
        self,
        handler: Handler,
        *,
        ip: str | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> HostileServer:
        server = HostileServer(handler, ip=ip, port=port, tls=tls)
        self._servers.append(server)
        return server

    def udp_dns(self, handler: Callable[[Any], bytes | None]) -> UdpDnsServer:
        server = UdpDnsServer(handler)
        self._servers.append(server)
        self.dns_address = server.address
        return server

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        self.dns.stop()


# ---------------------------------------------------------------------------
# Federation answers


SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def signed_keys(server_name: str, **extra: Any) -> dict[str, Any]:
    """A /_matrix/key/v2/server answer, self-signed (with `extra` fields)."""
    public = SIGNING_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body: dict[str, Any] = {
        "server_name": server_name,
        "valid_until_ts": int((time.time() + 86400) * 1000),
        "verify_keys": {"ed25519:hostile": {"key": _b64(public)}},
        "old_verify_keys": {},
    }
    body.update(extra)
    body["signatures"] = {
        server_name: {"ed25519:hostile": _b64(SIGNING_KEY.sign(canonical_json(body)))}
    }
    return body


VERSION_BODY = b'{"server": {"name": "Synapse", "version": "1.163.2"}}'


def good_version() -> HttpHandler:
    return respond(VERSION_BODY)


def keys_route(**extra: Any) -> Callable[[str], HttpHandler]:
    """The key answer, for the server name only known once the port is."""
    return lambda name: respond(json.dumps(signed_keys(name, **extra)).encode())


def raw_keys(text: bytes) -> Callable[[str], HttpHandler]:
    """A key answer whose body is `text` with {NAME} replaced."""
    return lambda name: respond(text.replace(b"{NAME}", name.encode()))


# ---------------------------------------------------------------------------
# Scenario builders: (lab) -> server name


Builder = Callable[[HostileLab], str]


def well_known(
    handler: HttpHandler, *, extra: Mapping[str, HttpHandler] = {}
) -> Builder:
    """wk.test: A -> a loopback address whose port 443 runs `handler` for the
    well-known; no SRV, nothing on 8448 (so the fallback fails too)."""

    def build(lab: HostileLab) -> str:
        ip = free_loopback_ip(ports=[443])
        lab.serve(
            http_routes({WK_PATH: handler, **extra}),
            ip=ip,
            port=443,
            tls=lab.tls("wk.test"),
        )
        lab.dns.set_zone({"wk.test": {"A": [ip]}})
        return "wk.test"

    return build


def well_known_redirect_elsewhere(status: int) -> Builder:
    """wk.test's well-known redirects (with `status`) to another port of the
    same host, which serves a valid delegation."""

    def build(lab: HostileLab) -> str:
        ip = free_loopback_ip(ports=[443])
        ctx = lab.tls("wk.test")
        other = lab.serve(
            http_routes({WK_PATH: respond(b'{"m.server": "fed.test:8448"}')}),
            ip=ip,
            tls=ctx,
        )
        lab.serve(
            http_routes(
                {WK_PATH: redirect(f"https://wk.test:{other.port}{WK_PATH}", status)}
            ),
            ip=ip,
            port=443,
            tls=ctx,
        )
        lab.dns.set_zone({"wk.test": {"A": [ip]}, "fed.test": {"A": [ip]}})
        return "wk.test"

    return build


def federation(
    *,
    version: HttpHandler | None = None,
    keys: Callable[[str], HttpHandler] | None = None,
    tls_only: ssl.TLSVersion | None = None,
) -> Builder:
    """fed.test:PORT: A -> a loopback TLS server answering the version and
    key endpoints (well-known and SRV are not consulted: explicit port)."""

    def build(lab: HostileLab) -> str:
        ip = free_loopback_ip(ports=[])
        routes: dict[str, HttpHandler] = {VERSION_PATH: version or good_version()}
        server = lab.serve(
            http_routes(routes), ip=ip, tls=lab.tls("fed.test", only=tls_only)
        )
        name = f"fed.test:{server.port}"
        routes[KEYS_PATH] = (keys or keys_route())(name)
        lab.dns.set_zone({"fed.test": {"A": [ip]}})
        return name

    return build


def raw_tls(handler: Handler) -> Builder:
    """tls.test:PORT, where PORT runs `handler` on the raw TCP connection."""

    def build(lab: HostileLab) -> str:
        server = lab.serve(handler)
        lab.dns.set_zone({"tls.test": {"A": [server.ip]}})
        return f"tls.test:{server.port}"

    return build


def dns_zone(zone: Mapping[str, Mapping[str, Any]], name: str = "dns.test") -> Builder:
    def build(lab: HostileLab) -> str:
        lab.dns.set_zone(zone)
        return name

    return build


def udp_dns(handler: Callable[[Any], bytes | None], name: str = "dns.test") -> Builder:
    def build(lab: HostileLab) -> str:
        lab.udp_dns(handler)
        return name

    return build


def srv_answer_with_port(target_zone: Callable[[int, str], dict[str, Any]]) -> Builder:
    """dns.test with SRV records built once a federation server's port is
    known; the server answers the version and keys for dns.test."""

    def build(lab: HostileLab) -> str:
        ip = free_loopback_ip(ports=[])
        routes: dict[str, HttpHandler] = {
            VERSION_PATH: good_version(),
            KEYS_PATH: keys_route()("dns.test"),
        }
        server = lab.serve(http_routes(routes), ip=ip, tls=lab.tls("dns.test"))
        lab.dns.set_zone(target_zone(server.port, ip))
        return "dns.test"

    return build


def all_hang(lab: HostileLab) -> str:
    """Every probe hangs: the server name's A answers, but its AAAA and SRV
    lookups never do, and its port 443 accepts and says nothing."""
    ip = free_loopback_ip(ports=[443])
    lab.serve(stall(), ip=ip, port=443)
    lab.dns.set_zone(
        {
            "hang.test": {"A": [ip], "AAAA": "timeout"},
            "_matrix-fed._tcp.hang.test": {"behaviour": "timeout"},
            "_matrix._tcp.hang.test": {"behaviour": "timeout"},
        }
    )
    return "hang.test"


def all_hang_targets(lab: HostileLab) -> str:
    """Discovery works (well-known delegates), then every target stalls:
    TCP accepts, TLS never starts."""
    ip = free_loopback_ip(ports=[443])
    stalled = lab.serve(stall(), ip=ip)
    body = json.dumps({"m.server": f"stuck.test:{stalled.port}"}).encode()
    lab.serve(
        http_routes({WK_PATH: respond(body)}),
        ip=ip,
        port=443,
        tls=lab.tls("hang.test"),
    )
    lab.dns.set_zone({"hang.test": {"A": [ip]}, "stuck.test": {"A": [ip]}})
    return "hang.test"


def all_dns_silent(lab: HostileLab) -> str:
    lab.dns.set_zone({"hang.test": {"behaviour": "timeout"}})
    lab.dns.update(
        {
            "_matrix-fed._tcp.hang.test": {"behaviour": "timeout"},
            "_matrix._tcp.hang.test": {"behaviour": "timeout"},
        }
    )
    return "hang.test"


# ---------------------------------------------------------------------------
# The scenarios


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Scenario:
    key: str
    family: str  # "http", "json", "tls", "dns", "deadline"
    behaviour: str  # what the hostile side does (for the table)
    build: Builder
    check: str  # the check that must show it
    status: Status
    reason: str | None  # its details.reason (None: not asserted)
    # Further checks that must end as (status, reason).
    also: Mapping[str, tuple[Status, str | None]] = attr.Factory(dict)
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def time_bound_s(self) -> float:
        return self.timeout_s + TIME_SLACK_S


def _s(key: str, family: str, behaviour: str, build: Builder, check: str,
       status: Status, reason: str | None, **kw: Any) -> Scenario:  # fmt: skip
    return Scenario(
        key=key,
        family=family,
        behaviour=behaviour,
        build=build,
        check=check,
        status=status,
        reason=reason,
        **kw,
    )


FAIL, WARN, OK = Status.FAIL, Status.WARN, Status.OK
WK, VER, KEYS = "discovery.well_known", "federation.version", "federation.keys"
HS, SRV, ADDR = "tls.handshake", "discovery.srv", "discovery.addresses"
TARGETS = "discovery.targets"

_DEEP = b"[" * 25_000 + b"]" * 25_000
_DEEP_OK = b"[" * 400 + b"]" * 400  # within json's recursion limit
_HUGE_INT = b"9" * 4_000  # within Python's int-parsing digit limit
_TOO_HUGE_INT = b"9" * 5_000  # beyond it

SCENARIOS: tuple[Scenario, ...] = (
    # -- HTTP: well-known ----------------------------------------------------
    _s("wk_headers_then_nothing", "http", "well-known: headers, then nothing",
       well_known(headers_then_nothing()), WK, FAIL, "timeout"),
    _s("wk_slowloris_headers", "http", "well-known: a header line dripped 1 byte/s",
       well_known(drip_headers()), WK, FAIL, "timeout"),
    _s("wk_slowloris_body", "http", "well-known: body dripped 1 byte/s",
       well_known(drip_body()), WK, FAIL, "timeout"),
    _s("wk_endless_headers", "http", "well-known: endless distinct 1 KiB header lines, full speed",
       well_known(endless_headers()), WK, FAIL, "headers_too_large"),
    _s("wk_endless_continuations", "http", "well-known: one header with endless continuation lines",
       well_known(endless_headers(folded=True)), WK, FAIL, "headers_too_large"),
    _s("keys_endless_headers", "http", "keys: endless distinct header lines, full speed",
       federation(keys=lambda name: endless_headers()), KEYS, FAIL, "headers_too_large"),
    _s("wk_endless_body", "http", "well-known: endless body (no length, read as fast as possible)",
       well_known(endless_body()), WK, FAIL, "too_large"),
    _s("wk_endless_chunked", "http", "well-known: endless chunked body",
       well_known(endless_body(chunked=True)), WK, FAIL, "too_large"),
    _s("wk_huge_length", "http", "well-known: Content-Length 10 GB",
       well_known(endless_body(length=10 * 1024**3)), WK, FAIL, "too_large"),
    _s("wk_too_big", "http", "well-known: complete 1 MiB body (limit 50 KiB)",
       well_known(respond(b'{"m.server": "' + b"a" * 1024 * 1024 + b'"}')), WK, FAIL, "too_large"),
    _s("wk_close_mid_body", "http", "well-known: connection closed mid-body",
       well_known(close_mid_body()), WK, FAIL, "truncated"),
    _s("wk_close_mid_headers", "http", "well-known: connection closed mid-headers",
       well_known(close_mid_headers()), WK, FAIL, "protocol"),
    _s("wk_redirect_self", "http", "well-known: redirects to itself",
       well_known(redirect("https://wk.test" + WK_PATH)), WK, FAIL, "redirect_loop"),
    _s("wk_redirect_pingpong", "http", "well-known: 308 loop between two URLs",
       well_known(redirect("/b", 308), extra={"/b": redirect(WK_PATH, 307)}), WK, FAIL, "redirect_loop"),
    _s("wk_redirect_chain", "http", "well-known: 25 distinct redirects",
       well_known(redirect("/r1"), extra={f"/r{i}": redirect(f"/r{i + 1}") for i in range(1, 30)}),
       WK, FAIL, "too_many_redirects"),
    _s("wk_redirect_http", "http", "well-known: redirect to http://",
       well_known(redirect("http://wk.test" + WK_PATH, 301)), WK, FAIL, "redirect_scheme"),
    _s("wk_redirect_ftp", "http", "well-known: redirect to ftp://",
       well_known(redirect("ftp://wk.test/server")), WK, FAIL, "redirect_scheme"),
    _s("wk_redirect_308_port", "http", "well-known: 308 to another port (followed, as Synapse)",
       well_known_redirect_elsewhere(308), WK, OK, None),
    _s("wk_redirect_302_port", "http", "well-known: 302 to another port (followed, as Synapse)",
       well_known_redirect_elsewhere(302), WK, OK, None),
    # -- JSON ------------------------------------------------------------------
    _s("wk_deep_json", "json", "well-known: JSON nested 25,000 deep",
       well_known(respond(b'{"m.server": ' + _DEEP + b"}")), WK, FAIL, "invalid"),
    _s("wk_nested_json", "json", "well-known: m.server is a list nested 400 deep",
       well_known(respond(b'{"m.server": ' + _DEEP_OK + b"}")), WK, FAIL, "invalid"),
    _s("wk_huge_number", "json", "well-known: 5,000-digit number",
       well_known(respond(b'{"m.server": ' + _TOO_HUGE_INT + b"}")), WK, FAIL, "invalid"),
    _s("wk_big_number", "json", "well-known: m.server is 1e999999 / a 4,000-digit number",
       well_known(respond(b'{"m.server": 1e999999, "x": ' + _HUGE_INT + b"}")), WK, FAIL, "invalid"),
    _s("wk_nan", "json", "well-known: m.server is NaN",
       well_known(respond(b'{"m.server": NaN}')), WK, FAIL, "invalid"),
    _s("wk_huge_max_age", "json", "well-known: Cache-Control max-age of 400 digits",
       well_known(respond(b'{"m.server": "fed.test:8448"}',
                          headers={"Cache-Control": "max-age=" + "9" * 400})), WK, OK, None),
    _s("wk_invalid_utf8", "json", "well-known: invalid UTF-8",
       well_known(respond(b'{"m.server": "\xff\xfe.test"}')), WK, FAIL, "invalid"),
    _s("wk_duplicate_keys", "json", "well-known: duplicate m.server keys (last wins, as Synapse)",
       well_known(respond(b'{"m.server": "bad name!", "m.server": "fed.test:8448"}')), WK, OK, None),
    _s("wk_wrong_content_type", "json", "well-known: valid body as text/html",
       well_known(respond(b'{"m.server": "fed.test:8448"}', content_type="text/html")),
       WK, WARN, None),
    _s("ver_headers_then_nothing", "http", "version: headers, then nothing",
       federation(version=headers_then_nothing()), VER, FAIL, "timeout"),
    _s("ver_slowloris", "http", "version: body dripped 1 byte/s",
       federation(version=drip_body()), VER, FAIL, "timeout"),
    _s("ver_endless", "http", "version: endless body",
       federation(version=endless_body()), VER, FAIL, "too_large"),
    _s("ver_close_mid_body", "http", "version: connection closed mid-body",
       federation(version=close_mid_body()), VER, FAIL, "truncated"),
    _s("ver_hostile_name", "json", "version: name with a lone surrogate, ANSI escapes and a newline",
       federation(version=respond(b'{"server": {"name": "Syn\\ud800\\u001b[2J\\nfedhealth FORGED", "version": "1\\u202e"}}')),
       VER, OK, None),
    _s("ver_redirect", "http", "version: 308 redirect (peers don't follow)",
       federation(version=redirect("https://elsewhere.test/", 308)), VER, FAIL, "http_status"),
    _s("ver_deep_json", "json", "version: JSON nested 25,000 deep",
       federation(version=respond(_DEEP)), VER, FAIL, "invalid"),
    _s("keys_slowloris", "http", "keys: header line dripped 1 byte/s",
       federation(keys=lambda name: drip_headers()), KEYS, FAIL, "timeout"),
    _s("keys_endless_chunked", "http", "keys: endless chunked body",
       federation(keys=lambda name: endless_body(chunked=True)), KEYS, FAIL, "too_large"),
    _s("keys_huge_length", "http", "keys: Content-Length 10 GB",
       federation(keys=lambda name: endless_body(length=10 * 1024**3)), KEYS, FAIL, "too_large"),
    _s("keys_invalid_utf8", "json", "keys: invalid UTF-8",
       federation(keys=raw_keys(b'{"server_name": "{NAME}", "x": "\xc3\x28"}')), KEYS, FAIL, "invalid"),
    _s("keys_deep_json", "json", "keys: JSON nested 25,000 deep",
       federation(keys=lambda name: respond(_DEEP)), KEYS, FAIL, "invalid"),
    _s("keys_nested_signed", "json", "keys: signed answer with a field nested 400 deep",
       federation(keys=keys_route(junk=json.loads(_DEEP_OK))), KEYS, OK, None),
    _s("keys_huge_valid_until", "json", "keys: signed, valid_until_ts of 4,000 digits",
       federation(keys=keys_route(valid_until_ts=int(_HUGE_INT))), KEYS, WARN, None),
    _s("keys_nan", "json", "keys: valid_until_ts NaN",
       federation(keys=raw_keys(b'{"server_name": "{NAME}", "valid_until_ts": NaN, '
                                b'"verify_keys": {"ed25519:a": {"key": "AAAA"}}}')),
       KEYS, FAIL, "bad_signature"),
    _s("keys_duplicate_keys", "json", "keys: duplicate server_name keys (last wins)",
       federation(keys=raw_keys(b'{"server_name": "{NAME}", "server_name": "evil.test"}')),
       KEYS, FAIL, "wrong_server_name"),
    _s("keys_wrong_content_type", "json", "keys: valid answer as text/plain",
       federation(keys=lambda name: respond(json.dumps(signed_keys(name)).encode(),
                                            content_type="text/plain")),
       KEYS, WARN, None),
    # -- TLS -------------------------------------------------------------------
    _s("tls_plain_http", "tls", "plain HTTP where TLS is expected",
       raw_tls(plain_http()), HS, FAIL, "handshake_failed",
       also={VER: (FAIL, "tls"), KEYS: (FAIL, "tls")}),
    _s("tls_garbage", "tls", "4 KiB of random bytes for a ServerHello",
       raw_tls(garbage()), HS, FAIL, "handshake_failed",
       also={VER: (FAIL, "tls"), KEYS: (FAIL, "tls")}),
    _s("tls_stall", "tls", "accepts, then never answers the ClientHello",
       raw_tls(stall()), HS, FAIL, "timeout",
       also={VER: (FAIL, "timeout"), KEYS: (FAIL, "timeout")}),
    _s("tls_1_0_only", "tls", "offers only TLS 1.0",
       federation(tls_only=ssl.TLSVersion.TLSv1), HS, FAIL, "old_protocol"),
    # -- DNS -------------------------------------------------------------------
    _s("dns_srv_timeout", "dns", "SRV query never answered",
       dns_zone({"_matrix-fed._tcp.dns.test": {"SRV": "timeout"}, "dns.test": {"A": ["127.0.0.9"]}}),
       SRV, FAIL, "timeout"),
    _s("dns_all_timeout", "dns", "no query ever answered",
       udp_dns(lambda q: None), SRV, FAIL, "timeout",
       also={WK: (FAIL, "timeout")}),
    _s("dns_srv_servfail", "dns", "SRV answered SERVFAIL",
       dns_zone({"_matrix-fed._tcp.dns.test": {"SRV": "servfail"}, "dns.test": {"A": ["127.0.0.9"]}}),
       SRV, FAIL, "servfail"),
    _s("dns_servfail_everything", "dns", "every query answered SERVFAIL",
       udp_dns(servfail_reply), SRV, FAIL, "servfail"),
    _s("dns_truncated_tcp_ok", "dns", "SRV truncated over UDP (TC), complete over TCP",
       srv_answer_with_port(lambda port, ip: {
           "_matrix-fed._tcp.dns.test": {"SRV": [srv(10, 5, port, "host.dns.test")], "behaviour": "truncate"},
           "host.dns.test": {"A": [ip]},
       }), SRV, OK, None, also={VER: (OK, None), KEYS: (OK, None)}),
    _s("dns_truncated_no_tcp", "dns", "every answer truncated, TCP refused",
       udp_dns(truncated_reply), SRV, FAIL, "servfail"),
    _s("dns_garbage", "dns", "random bytes with the query's id",
       udp_dns(garbage_reply), SRV, FAIL, None),
    _s("dns_many_a", "dns", "500 A records for the federation host",
       dns_zone({"many.test": {"A": many_a(500)}}, name="many.test:8448"),
       TARGETS, OK, None),
    _s("dns_many_srv", "dns", "300 SRV records",
       dns_zone({
           "_matrix-fed._tcp.dns.test": {"SRV": [srv(i % 7, i, 8448, f"h{i}.dns.test") for i in range(300)]},
           **{f"h{i}.dns.test": {"A": [f"127.98.0.{i % 250 + 1}"]} for i in range(300)},
       }), TARGETS, OK, None),
    _s("dns_srv_dot", "dns", 'SRV target "." (service unavailable)',
       dns_zone({"_matrix-fed._tcp.dns.test": {"SRV": [srv(0, 0, 0, ".")]}, "dns.test": {"A": ["127.0.0.9"]}}),
       SRV, FAIL, "unavailable"),
    _s("dns_srv_cname", "dns", "SRV target is a CNAME",
       srv_answer_with_port(lambda port, ip: {
           "_matrix-fed._tcp.dns.test": {"SRV": [srv(10, 5, port, "alias.dns.test")]},
           "alias.dns.test": {"CNAME": "real.dns.test"},
           "real.dns.test": {"A": [ip]},
       }), SRV, WARN, "cname_target"),
    # -- A run where everything hangs --------------------------------------
    _s("hang_everything", "deadline", "A answers; AAAA, SRV and port 443 hang",
       all_hang, WK, FAIL, "timeout", also={SRV: (FAIL, "timeout")}),
    _s("hang_all_dns", "deadline", "every DNS query hangs",
       all_dns_silent, WK, FAIL, "timeout",
       also={SRV: (FAIL, "timeout"), ADDR: (FAIL, "srv_failed"),
             "discovery.well_known_consistency": (Status.SKIP, None)}),
    _s("hang_all_targets", "deadline", "discovery works, every target stalls in TLS",
       all_hang_targets, HS, FAIL, "timeout",
       also={VER: (FAIL, "timeout"), KEYS: (FAIL, "timeout")}),
)  # fmt: skip

BY_KEY = {s.key: s for s in SCENARIOS}


# ---------------------------------------------------------------------------
# Running one


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Measured:
    scenario: Scenario
    findings: NetworkFindings
    elapsed_s: float
    peak_bytes: int
    problems: tuple[str, ...]  # log records and logcontext errors
    report_json: str

    def checks(self, check_id: str) -> list[CheckResult]:
        return [c for c in self.findings.checks if c.id == check_id]

    def first(self, check_id: str) -> CheckResult:
        found = self.checks(check_id)
        if not found:
            raise AssertionError(
                f"no {check_id} in {[c.id for c in self.findings.checks]}"
            )
        return found[0]

    def verify(self) -> list[str]:
        """What is wrong with this run, per the scenario's expectations."""
        s = self.scenario
        wrong = list(self.problems)
        if self.elapsed_s >= s.time_bound_s:
            wrong.append(f"took {self.elapsed_s:.2f}s (bound {s.time_bound_s:.1f}s)")
        if self.peak_bytes >= MEMORY_BOUND_BYTES:
            wrong.append(
                f"peak memory {self.peak_bytes} B (bound {MEMORY_BOUND_BYTES})"
            )
        for check_id, (status, reason) in {
            s.check: (s.status, s.reason),
            **s.also,
        }.items():
            found = self.checks(check_id)
            if not found:
                wrong.append(f"no {check_id} result")
                continue
            c = found[0]
            got_reason = c.details.get("reason")
            if c.status is not status or (reason is not None and got_reason != reason):
                wrong.append(
                    f"{check_id}: expected {status.value}/{reason}, got "
                    f"{c.status.value}/{got_reason}: {c.summary}"
                )
            if c.status in (Status.FAIL, Status.WARN) and not c.summary:
                wrong.append(f"{check_id}: no summary")
            if "timeout" == got_reason and "timed out" not in c.summary:
                wrong.append(f"{check_id}: a timeout whose summary does not say so")
        return wrong


# Synapse's complaints about broken logcontext handling.
LOGCONTEXT_WORDS = (
    "sentinel context",
    "Expected logging context",
    "did not maintain the calling logcontext",
    "Re-starting finished log context",
)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"log {record.name} {record.levelname}: {record.getMessage()}"
        if record.exc_info:
            text += " (with a traceback)"
        self.lines.append(text[:500])


@contextmanager
def captured_problems() -> Iterator[list[str]]:
    """Every WARNING+ Python log record, and every error Twisted logs."""
    problems: list[str] = []
    handler = _Capture()
    root = logging.getLogger()
    root.addHandler(handler)

    def observe(event: Mapping[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("log_level") in (
            LogLevel.error,
            LogLevel.critical,
        ):
            failure = event.get("log_failure")
            problems.append(
                "twisted error: "
                + (str(failure.value) if failure is not None else str(event))[:500]
            )

    observer: Any = observe  # an ILogObserver
    globalLogPublisher.addObserver(observer)
    try:
        yield problems
    finally:
        globalLogPublisher.removeObserver(observer)
        root.removeHandler(handler)
        problems.extend(handler.lines)


async def run_scenario(
    scenario: Scenario, reactor: Any, threadpool: ThreadPool
) -> Measured:
    from synapse.logging.context import (
        current_context,
        make_deferred_yieldable,
        run_in_background,
    )
    from synapse.synapse_rust.logcontext import LoggingContext

    lab = HostileLab()
    try:
        name = scenario.build(lab)
        settings = RunSettings(
            server_name=name,
            timeout_s=scenario.timeout_s,
            cert_expiry_warning_days=14,
            ca_files=(lab.ca_file,),
            dns_servers=(lab.dns_address,),
            user_agent="Synapse/hostile-test",
        )
        io = ProcessIO(reactor, threadpool=threadpool).for_run(settings)
        checker = NetworkChecker(io, settings)
        with captured_problems() as problems:
            tracemalloc.start()
            baseline = tracemalloc.get_traced_memory()[0]
            started = time.monotonic()
            try:
                with LoggingContext(
                    name="hostile-" + scenario.key, server_name=name
                ) as ctx:
                    findings = await make_deferred_yieldable(
                        run_in_background(
                            checker.check,
                            Deadline.after(reactor, settings.timeout_s),
                        )
                    )
                    if current_context() is not ctx:
                        problems.append("the logcontext was not restored after the run")
                elapsed = time.monotonic() - started
                peak = tracemalloc.get_traced_memory()[1] - baseline
            finally:
                tracemalloc.stop()
                # As the runner does when a run ends.
                if io.targets is not None:
                    io.targets.close_all()
            report = Report.build(
                server_name=name,
                checks=findings.checks,
                federation_disabled=False,
                generated_at=int(time.time() * 1000),
                duration_ms=int(elapsed * 1000),
                federation_tester=findings.federation_tester,
            )
            # As the endpoint renders it, and strictly (no NaN/Infinity).
            report_json = json.dumps(report.to_json(), indent=2)
            json.dumps(report.to_json(), allow_nan=False)
            problems.extend(_unwritable_outputs(report))
        return Measured(
            scenario=scenario,
            findings=findings,
            elapsed_s=elapsed,
            peak_bytes=max(0, peak),
            problems=tuple(problems),
            report_json=report_json,
        )
    finally:
        lab.close()


def _unwritable_outputs(report: Report) -> list[str]:
    """What remote text would break: the JSON as Synapse encodes it, the
    text page (and CLI), the log lines; each must encode as UTF-8 without a
    control character other than the text's own newlines."""
    from synapse.util.json import json_encoder

    from synapse_fedhealth.remote_text import clean_json
    from synapse_fedhealth.render.text import problem_line, render_text

    outputs = {
        "json": json_encoder.encode(clean_json(report.to_json())),
        "text": render_text(report, width=100),
        **{f"log {c.id}": problem_line(c) for c in report.checks},
    }
    broken = []
    for name, text in outputs.items():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            broken.append(f"{name} output cannot be encoded: {e}")
            continue
        if any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in text):
            broken.append(f"{name} output holds a control character")
        if name.startswith("log") and "\n" in text:
            broken.append(f"{name} is more than one line")
    return broken


def format_table(rows: list[Measured]) -> str:
    """The Markdown table of docs/reliability.md."""
    lines = [
        "| Hostile behaviour | Check | Result | Bound (time / memory) | Measured time | Measured peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for m in rows:
        s = m.scenario
        c = m.checks(s.check)
        got = (
            f"{c[0].status.value}"
            + (
                f" `{c[0].details['reason']}`"
                if c and c[0].details.get("reason")
                else ""
            )
            if c
            else "missing"
        )
        lines.append(
            f"| {s.behaviour} | `{s.check}` | {got} | "
            f"< {s.time_bound_s:.1f} s (timeout {s.timeout_s:.0f} s) / < {MEMORY_BOUND_BYTES // 1024**2} MiB | "
            f"{m.elapsed_s:.2f} s | {m.peak_bytes / 1024:.0f} KiB |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The test cases (one trial TestCase per family; trial runs the reactor)


class HostileTestCase(unittest.TestCase):
    """Runs each scenario of `family` as its own test (see add_tests)."""

    family = ""

    def setUp(self) -> None:
        self.threadpool = ThreadPool(minthreads=1, maxthreads=8, name="hostile-dns")
        self.threadpool.start()
        self.addCleanup(self.threadpool.stop)

    async def check_scenario(self, key: str) -> Measured:
        from twisted.internet import reactor

        measured = await run_scenario(BY_KEY[key], reactor, self.threadpool)
        wrong = measured.verify()
        assert not wrong, f"{key}: " + "; ".join(wrong)
        return measured


def add_tests(cls: type[HostileTestCase]) -> type[HostileTestCase]:
    """A `test_<key>` method for each scenario of `cls.family`."""
    for scenario in SCENARIOS:
        if scenario.family != cls.family:
            continue

        async def test(self: HostileTestCase, key: str = scenario.key) -> None:
            await self.check_scenario(key)

        test.__name__ = f"test_{scenario.key}"
        test.__doc__ = f"{scenario.behaviour}: {scenario.check} {scenario.status.value}"
        setattr(cls, test.__name__, test)
    return cls
