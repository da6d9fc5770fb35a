"""An authoritative DNS server for a fake zone, on loopback, over UDP and TCP.

It answers from a table of records that tests change while it runs, and can
misbehave per name (and per record type): SERVFAIL, REFUSED, NXDOMAIN,
silence (a timeout), a truncated UDP answer, a delayed answer. Any name it
doesn't know is NXDOMAIN, so a process that uses it as its only resolver
never looks anything up elsewhere.

    with DnsServer() as dns:                      # 127.x.y.z:<random port>
        dns.set_zone({
            "example.test": {"A": ["127.80.0.1"], "AAAA": "timeout"},
            "_matrix-fed._tcp.example.test": {"SRV": [srv(10, 5, 443, "m.example.test")]},
            "m.example.test": {"CNAME": "example.test"},
            "broken.test": {"behaviour": "servfail"},
        })
        dns.address  # "127.x.y.z:PORT", what the module's `dns_servers` takes

Port 53 (for resolvers that can't use another port: glibc, Twisted) needs
root: `DnsServer(port=53)` picks a free loopback address for it.

Threads: one for UDP, one accepting TCP, one per TCP connection (bounded).
Every wait is bounded, and `stop()` (also at interpreter exit) ends them.
"""

from __future__ import annotations

import atexit
import enum
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attr
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from .loopback import free_loopback_ip, host_port

SOCKET_POLL_S = 0.2  # how often the serving threads look at the stop flag
TCP_IDLE_S = 15.0  # a TCP connection without a complete query for this long is closed
TCP_MAX_CONNECTIONS = 64
MAX_CNAME_CHAIN = 8
MAX_QUERY_LOG = 10_000
UDP_PLAIN_MAX = 512  # a UDP answer to a query without EDNS
TCP_MAX = 65_535
STOP_JOIN_S = 2.0
BIND_ATTEMPTS = 20


class Behaviour(str, enum.Enum):
    """How the server treats a query for a name (and optionally a type)."""

    ANSWER = "answer"  # the records (the default)
    SERVFAIL = "servfail"
    REFUSED = "refused"
    NXDOMAIN = "nxdomain"  # even though the name has records
    TIMEOUT = "timeout"  # no answer at all, over UDP and TCP
    TRUNCATE = "truncate"  # over UDP: no records, TC bit set; over TCP: the records


BEHAVIOUR_NAMES = {b.value for b in Behaviour}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Query:
    """One query the server received."""

    name: str  # lowercase, without the final dot
    rdtype: str  # "A", "SRV", ...
    transport: str  # "udp" or "tcp"
    client: str  # "ip:port"
    at: float  # time.monotonic()


@attr.s(slots=True, auto_attribs=True)
class _Entry:
    rdatas: dict[int, list[dns.rdata.Rdata]] = attr.Factory(dict)
    behaviours: dict[int | None, Behaviour] = attr.Factory(dict)  # None: all types
    delay_s: float = 0.0
    ttl: int | None = None


def srv(priority: int, weight: int, port: int, target: str) -> str:
    """An SRV record's text, e.g. srv(10, 5, 8448, "matrix.example.test").
    A target of "." means "no service here"."""
    return f"{priority} {weight} {port} {_absolute(target)}"


def many_a(count: int, first: str = "127.99.0.1") -> list[str]:
    """`count` consecutive IPv4 addresses starting at `first` (for answers
    with hundreds of A records)."""
    import ipaddress

    start = ipaddress.IPv4Address(first)
    return [str(start + i) for i in range(count)]


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name
    return dns.name.from_text(_absolute(name))


def _rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    if isinstance(rdtype, int):
        return dns.rdatatype.RdataType.make(rdtype)
    return dns.rdatatype.from_text(rdtype.upper())


def _to_rdata(rdtype: dns.rdatatype.RdataType, value: Any) -> dns.rdata.Rdata:
    if isinstance(value, dns.rdata.Rdata):
        return value
    if rdtype == dns.rdatatype.SRV and isinstance(value, (tuple, list)):
        priority, weight, port, target = value
        value = srv(int(priority), int(weight), int(port), str(target))
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, str(value), origin=dns.name.root, relativize=False
    )


def _behaviour(value: Any) -> Behaviour | None:
    if isinstance(value, Behaviour):
        return value
    if isinstance(value, str) and value.lower() in BEHAVIOUR_NAMES:
        return Behaviour(value.lower())
    return None


# A zone as plain data:
#   {name: {"A": [...], "AAAA": [...], "SRV": [...], "CNAME": "target", "TXT": [...],
#           "AAAA": "timeout",            # a behaviour for one type
#           "behaviour": "servfail",      # ... or for every type of the name
#           "delay": 1.5,                 # seconds before answering
#           "ttl": 300}}                  # TTL of the name's records
# Record values are a string or a list of strings in zone-file syntax (names
# relative to the root), SRV values may be (priority, weight, port, target)
# tuples. A value that is the name of a Behaviour is that behaviour.
ZoneSpec = Mapping[str, Mapping[str, Any]]


def _entry_from_spec(spec: Mapping[str, Any]) -> _Entry:
    entry = _Entry()
    for key, value in spec.items():
        lowered = key.lower()
        if lowered in ("behaviour", "behavior"):
            behaviour = _behaviour(value)
            if behaviour is None:
                raise ValueError(f"unknown DNS behaviour {value!r}")
            entry.behaviours[None] = behaviour
        elif lowered == "delay":
            entry.delay_s = float(value)
        elif lowered == "ttl":
            entry.ttl = int(value)
        else:
            rdtype = _rdtype(key)
            behaviour = _behaviour(value)
            if behaviour is not None:
                entry.behaviours[rdtype] = behaviour
                continue
            values = [value] if isinstance(value, (str, tuple)) else list(value)
            entry.rdatas[rdtype] = [_to_rdata(rdtype, v) for v in values]
    return entry


class DnsServer:
    """See the module docstring. `host=None` picks a free loopback address;
    `port=0` a free port (the same for UDP and TCP)."""

    def __init__(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        zone: ZoneSpec | None = None,
        default_ttl: int = 0,
    ) -> None:
        self.default_ttl = default_ttl
        self._lock = threading.Lock()
        self._entries: dict[dns.name.Name, _Entry] = {}
        self._queries: deque[Query] = deque(maxlen=MAX_QUERY_LOG)
        self._query_event = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._timers: set[threading.Timer] = set()
        self._tcp_slots = threading.BoundedSemaphore(TCP_MAX_CONNECTIONS)
        self._udp, self._tcp = self._bind(host, port)
        sockname = self._udp.getsockname()
        self.host: str = sockname[0]
        self.port: int = sockname[1]
        self.started = False
        if zone is not None:
            self.set_zone(zone)

    # -- sockets ------------------------------------------------------------

    @staticmethod
    def _bind(host: str | None, port: int) -> tuple[socket.socket, socket.socket]:
        last_error: OSError | None = None
        for _ in range(BIND_ATTEMPTS):
            ip = host
            if ip is None:
                ip = free_loopback_ip(
                    ports=[port] if port else [], udp_ports=[port] if port else []
                )
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((ip, port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((ip, udp.getsockname()[1]))
                tcp.listen(TCP_MAX_CONNECTIONS)
            except OSError as e:
                udp.close()
                tcp.close()
                last_error = e
                if host is not None and port != 0:
                    break  # a fixed address: retrying won't help
                continue
            udp.settimeout(SOCKET_POLL_S)
            tcp.settimeout(SOCKET_POLL_S)
            return udp, tcp
        raise OSError(f"cannot bind a DNS server on {host}:{port}: {last_error}")

    @property
    def address(self) -> str:
        """`ip:port`, as the module's `dns_servers` option takes it."""
        return host_port(self.host, self.port)

    # -- life cycle ----------------------------------------------------------

    def start(self) -> DnsServer:
        if self.started:
            return self
        self.started = True
        for target, name in ((self._serve_udp, "udp"), (self._serve_tcp, "tcp")):
            thread = threading.Thread(
                target=target, name=f"netlab-dns-{name}-{self.port}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        _LIVE.add(self)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            timers = list(self._timers)
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        for thread in self._threads:
            thread.join(STOP_JOIN_S)
        self._udp.close()
        self._tcp.close()
        _LIVE.discard(self)

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the zone ------------------------------------------------------------

    def set_zone(self, zone: ZoneSpec) -> None:
        """Replace every name with those of `zone`."""
        entries = {_name(n): _entry_from_spec(spec) for n, spec in zone.items()}
        with self._lock:
            self._entries = entries

    def update(self, zone: ZoneSpec) -> None:
        """Replace the names given in `zone`, keep the others."""
        entries = {_name(n): _entry_from_spec(spec) for n, spec in zone.items()}
        with self._lock:
            self._entries.update(entries)

    def clear(self) -> None:
        with self._lock:
            self._entries = {}

    def remove(self, name: str) -> None:
        with self._lock:
            self._entries.pop(_name(name), None)

    def set_records(self, name: str, rdtype: str, values: Iterable[Any]) -> None:
        """Replace the records of one type of `name` (an empty list: none)."""
        t = _rdtype(rdtype)
        rdatas = [_to_rdata(t, v) for v in values]
        with self._lock:
            entry = self._entries.setdefault(_name(name), _Entry())
            if rdatas:
                entry.rdatas[t] = rdatas
            else:
                entry.rdatas.pop(t, None)

    def add_records(self, name: str, rdtype: str, values: Iterable[Any]) -> None:
        t = _rdtype(rdtype)
        rdatas = [_to_rdata(t, v) for v in values]
        with self._lock:
            entry = self._entries.setdefault(_name(name), _Entry())
            entry.rdatas.setdefault(t, []).extend(rdatas)

    def set_behaviour(
        self, name: str, behaviour: Behaviour | str, rdtype: str | None = None
    ) -> None:
        """How to treat queries for `name` (of type `rdtype`, or of every type)."""
        b = _behaviour(behaviour)
        if b is None:
            raise ValueError(f"unknown DNS behaviour {behaviour!r}")
        key = None if rdtype is None else _rdtype(rdtype)
        with self._lock:
            entry = self._entries.setdefault(_name(name), _Entry())
            if b is Behaviour.ANSWER:
                entry.behaviours.pop(key, None)
            else:
                entry.behaviours[key] = b

    def set_delay(self, name: str, seconds: float) -> None:
        with self._lock:
            self._entries.setdefault(_name(name), _Entry()).delay_s = seconds

    # -- the query log -------------------------------------------------------

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    def queries_for(self, name: str, rdtype: str | None = None) -> list[Query]:
        wanted = name.lower().rstrip(".")
        return [
            q
            for q in self.queries
            if q.name == wanted and (rdtype is None or q.rdtype == rdtype.upper())
        ]

    def wait_for_query(
        self, name: str, rdtype: str | None = None, timeout: float = 5.0
    ) -> Query | None:
        """The first logged query for `name` (and `rdtype`), waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.queries_for(name, rdtype)
            if found:
                return found[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with self._query_event:
                self._query_event.wait(min(remaining, SOCKET_POLL_S))

    # -- a client for tests ----------------------------------------------------

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server, without caching."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = lifetime
        resolver.timeout = lifetime
        return resolver

    # -- answering -----------------------------------------------------------

    def _answer(
        self, wire: bytes, transport: str, client: str
    ) -> tuple[bytes | None, float]:
        """The reply to `wire` (None: stay silent) and how long to wait first."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, 0.0
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP)
            return self._wire(query, response, transport), 0.0
        question = query.question[0]
        qname: dns.name.Name = question.name
        qtype = int(question.rdtype)
        with self._lock:
            self._queries.append(
                Query(
                    name=qname.to_text(omit_final_dot=True).lower(),
                    rdtype=dns.rdatatype.to_text(question.rdtype),
                    transport=transport,
                    client=client,
                    at=time.monotonic(),
                )
            )
            self._query_event.notify_all()
            entry = self._entries.get(qname)
            behaviour = Behaviour.ANSWER
            delay = 0.0
            if entry is not None:
                behaviour = entry.behaviours.get(
                    qtype, entry.behaviours.get(None, Behaviour.ANSWER)
                )
                delay = entry.delay_s
                self._fill(response, qname, qtype)
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
        if behaviour is Behaviour.TIMEOUT:
            return None, 0.0
        if behaviour in (Behaviour.SERVFAIL, Behaviour.REFUSED, Behaviour.NXDOMAIN):
            response.answer = []
            response.additional = []
            response.set_rcode(
                {
                    Behaviour.SERVFAIL: dns.rcode.SERVFAIL,
                    Behaviour.REFUSED: dns.rcode.REFUSED,
                    Behaviour.NXDOMAIN: dns.rcode.NXDOMAIN,
                }[behaviour]
            )
        elif behaviour is Behaviour.TRUNCATE and transport == "udp":
            response.answer = []
            response.additional = []
            response.flags |= dns.flags.TC
        return self._wire(query, response, transport), delay

    def _fill(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: int
    ) -> None:
        """Put the answer for (qname, qtype) into `response`, following CNAMEs
        inside the zone. Called with the lock held."""
        name = qname
        seen: set[dns.name.Name] = set()
        for _ in range(MAX_CNAME_CHAIN):
            entry = self._entries.get(name)
            if entry is None:
                # A CNAME into nothing: the final name does not exist.
                response.set_rcode(dns.rcode.NXDOMAIN)
                return
            ttl = self.default_ttl if entry.ttl is None else entry.ttl
            types = list(entry.rdatas) if qtype == dns.rdatatype.ANY else [qtype]
            found = False
            for t in types:
                rdatas = entry.rdatas.get(t)
                if rdatas:
                    response.answer.append(dns.rrset.from_rdata_list(name, ttl, rdatas))
                    found = True
            if found:
                return
            cnames = entry.rdatas.get(dns.rdatatype.CNAME)
            if not cnames or qtype == dns.rdatatype.CNAME:
                return  # NODATA
            response.answer.append(dns.rrset.from_rdata_list(name, ttl, cnames[:1]))
            seen.add(name)
            target = cnames[0].target  # type: ignore[attr-defined]
            if not isinstance(target, dns.name.Name) or target in seen:
                return
            name = target

    @staticmethod
    def _wire(
        query: dns.message.Message, response: dns.message.Message, transport: str
    ) -> bytes:
        if transport == "udp":
            max_size = (
                max(UDP_PLAIN_MAX, min(query.payload, TCP_MAX))
                if query.edns >= 0
                else UDP_PLAIN_MAX
            )
        else:
            max_size = TCP_MAX
        return response.to_wire(max_size=max_size, prefer_truncation=True)

    # -- UDP -----------------------------------------------------------------

    def _serve_udp(self) -> None:
        while not self._stopping.is_set():
            try:
                data, peer = self._udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply, delay = self._answer(data, "udp", host_port(peer[0], peer[1]))
            if reply is None:
                continue
            if delay > 0:
                self._later(delay, self._send_udp, reply, peer)
            else:
                self._send_udp(reply, peer)

    def _send_udp(self, reply: bytes, peer: Any) -> None:
        try:
            self._udp.sendto(reply, peer)
        except OSError:
            pass

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        def run() -> None:
            with self._lock:
                self._timers.discard(timer)
            if not self._stopping.is_set():
                fn(*args)

        timer = threading.Timer(delay, run)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    # -- TCP -----------------------------------------------------------------

    def _serve_tcp(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, peer = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._tcp_slots.acquire(blocking=False):
                conn.close()
                continue
            thread = threading.Thread(
                target=self._serve_tcp_connection,
                args=(conn, host_port(peer[0], peer[1])),
                name=f"netlab-dns-tcp-conn-{self.port}",
                daemon=True,
            )
            thread.start()

    def _recv_exact(
        self, conn: socket.socket, count: int, deadline: float
    ) -> bytes | None:
        data = b""
        while len(data) < count:
            if self._stopping.is_set() or time.monotonic() >= deadline:
                return None
            try:
                chunk = conn.recv(count - len(data))
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def _serve_tcp_connection(self, conn: socket.socket, client: str) -> None:
        try:
            conn.settimeout(SOCKET_POLL_S)
            # A bounded number of queries per connection, each within TCP_IDLE_S.
            for _ in range(100):
                deadline = time.monotonic() + TCP_IDLE_S
                header = self._recv_exact(conn, 2, deadline)
                if header is None:
                    return
                wire = self._recv_exact(conn, int.from_bytes(header, "big"), deadline)
                if wire is None:
                    return
                reply, delay = self._answer(wire, "tcp", client)
                if reply is None:
                    continue  # silence; the client gives up and closes
                if delay > 0 and self._stopping.wait(delay):
                    return
                try:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    return
        finally:
            conn.close()
            self._tcp_slots.release()


_LIVE: set[DnsServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


def resolve(
    server: DnsServer, name: str, rdtype: str = "A", *, tcp: bool = False
) -> Sequence[str]:
    """The texts of the records the server gives for (name, rdtype): a small
    helper for tests. Raises dnspython's exceptions (NXDOMAIN, NoAnswer, ...)."""
    answer = server.resolver().resolve(name, rdtype, tcp=tcp, search=False)
    return [r.to_text() for r in answer]
