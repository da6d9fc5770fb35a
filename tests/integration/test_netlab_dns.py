"""The lab's DNS server, asked with dnspython's resolver (on loopback only)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import dns.resolver
import pytest

from tests.integration.netlab.dns_server import (
    Behaviour,
    DnsServer,
    ZoneSpec,
    many_a,
    resolve,
    srv,
)
from tests.integration.netlab.loopback import is_loopback

ZONE: ZoneSpec = {
    "example.test": {"A": ["127.80.0.1", "127.80.0.2"], "AAAA": ["::1"]},
    "_matrix-fed._tcp.example.test": {
        "SRV": [
            srv(10, 5, 8448, "matrix.example.test"),
            (20, 0, 443, "alias.example.test"),
        ]
    },
    "matrix.example.test": {"A": "127.80.0.3"},
    "alias.example.test": {"CNAME": "matrix.example.test"},
    "_matrix-fed._tcp.none.test": {"SRV": [srv(0, 0, 0, ".")]},
    "servfail.test": {"behaviour": "servfail"},
    "silent.test": {"behaviour": Behaviour.TIMEOUT},
    "halfbroken.test": {"A": ["127.80.0.4"], "AAAA": "timeout"},
    "tc.test": {"A": ["127.80.0.5"], "behaviour": "truncate"},
    "many.test": {"A": many_a(300)},
    "slow.test": {"A": ["127.80.0.6"], "delay": 0.5},
}


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer(zone=ZONE) as s:
        yield s


def test_binds_loopback_udp_and_tcp(server: DnsServer) -> None:
    assert is_loopback(server.host)
    host, _, port = server.address.rpartition(":")
    assert (host, int(port)) == (server.host, server.port)
    assert sorted(resolve(server, "example.test")) == ["127.80.0.1", "127.80.0.2"]
    assert sorted(resolve(server, "example.test", tcp=True)) == [
        "127.80.0.1",
        "127.80.0.2",
    ]
    assert resolve(server, "EXAMPLE.test.", "AAAA") == ["::1"]


def test_srv_cname_and_dot_target(server: DnsServer) -> None:
    assert sorted(resolve(server, "_matrix-fed._tcp.example.test", "SRV")) == [
        "10 5 8448 matrix.example.test.",
        "20 0 443 alias.example.test.",
    ]
    # A CNAME inside the zone is followed in the same answer.
    answer = server.resolver().resolve("alias.example.test", "A", search=False)
    assert [r.to_text() for r in answer] == ["127.80.0.3"]
    assert answer.canonical_name.to_text() == "matrix.example.test."
    assert resolve(server, "alias.example.test", "CNAME") == ["matrix.example.test."]
    assert resolve(server, "_matrix-fed._tcp.none.test", "SRV") == ["0 0 0 ."]


def test_nxdomain_and_nodata(server: DnsServer) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolve(server, "unknown.test")
    with pytest.raises(dns.resolver.NoAnswer):
        resolve(server, "matrix.example.test", "AAAA")


def test_servfail_and_timeout(server: DnsServer) -> None:
    with pytest.raises(dns.resolver.NoNameservers) as e:
        resolve(server, "servfail.test")
    assert "SERVFAIL" in str(e.value)
    began = time.monotonic()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        server.resolver(lifetime=0.5).resolve("silent.test", "A", search=False)
    assert time.monotonic() - began < 3
    # Per type: A answers, AAAA is silent.
    assert resolve(server, "halfbroken.test") == ["127.80.0.4"]
    with pytest.raises(dns.resolver.LifetimeTimeout):
        server.resolver(lifetime=0.5).resolve("halfbroken.test", "AAAA", search=False)


def test_truncation_over_udp_then_tcp(server: DnsServer) -> None:
    query = dns.message.make_query("tc.test", "A")
    udp = dns.query.udp(query, server.host, port=server.port, timeout=2)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = dns.query.tcp(query, server.host, port=server.port, timeout=2)
    assert not tcp.flags & dns.flags.TC
    assert [r.to_text() for r in tcp.answer[0]] == ["127.80.0.5"]
    # The resolver retries over TCP by itself.
    assert resolve(server, "tc.test") == ["127.80.0.5"]
    transports = {q.transport for q in server.queries_for("tc.test", "A")}
    assert transports == {"udp", "tcp"}


def test_hundreds_of_a_records(server: DnsServer) -> None:
    plain = dns.query.udp(
        dns.message.make_query("many.test", "A", use_edns=False),
        server.host,
        port=server.port,
        timeout=2,
    )
    assert plain.flags & dns.flags.TC
    assert len(resolve(server, "many.test")) == 300


def test_delay(server: DnsServer) -> None:
    began = time.monotonic()
    assert resolve(server, "slow.test") == ["127.80.0.6"]
    assert time.monotonic() - began >= 0.45


def test_change_while_running(server: DnsServer) -> None:
    server.set_behaviour("example.test", "servfail")
    with pytest.raises(dns.resolver.NoNameservers):
        resolve(server, "example.test")
    server.set_behaviour("example.test", Behaviour.ANSWER)
    server.set_records("example.test", "A", ["127.80.1.1"])
    assert resolve(server, "example.test") == ["127.80.1.1"]
    server.update({"new.test": {"A": "127.80.1.2"}})
    assert resolve(server, "new.test") == ["127.80.1.2"]
    server.remove("new.test")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolve(server, "new.test")
    server.clear()
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolve(server, "example.test")
    assert server.wait_for_query("example.test", "A", timeout=0.1) is not None
    assert server.wait_for_query("never.test", timeout=0.1) is None


def test_garbage_does_not_kill_it(server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00garbage", (server.host, server.port))
    with socket.create_connection((server.host, server.port), timeout=2) as c:
        c.sendall(b"\x00\x05abc")  # a short message, then close
    assert sorted(resolve(server, "example.test")) == ["127.80.0.1", "127.80.0.2"]


def test_stop_is_prompt() -> None:
    server = DnsServer().start()
    began = time.monotonic()
    server.stop()
    assert time.monotonic() - began < 2


def test_port_53_as_root() -> None:
    try:
        server = DnsServer(port=53, zone={"x.test": {"A": "127.80.0.9"}})
    except OSError as e:
        pytest.skip(f"port 53 not available: {e}")
    with server:
        assert server.port == 53
        assert resolve(server, "x.test") == ["127.80.0.9"]
        assert dns.rdatatype.A == 1
