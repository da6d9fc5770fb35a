"""What one run costs the network: every request, TLS handshake and DNS
question of a healthy run, counted through the real families, runner,
run-scoped DNS cache and target connections, with fake I/O. The requests to
the target ride the probe's connection: one handshake for the target. A
notary costs one resolution and one POST, never a probe of its
addresses."""

from __future__ import annotations

from typing import Any

import attr
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from synapse_fedhealth.config import parse_fedhealth_config
from synapse_fedhealth.echo import NonceBook
from synapse_fedhealth.engine.probes import TargetConnections
from synapse_fedhealth.families import DefaultFamilies
from synapse_fedhealth.homeserver import HomeserverSnapshot, ListenerInfo
from synapse_fedhealth.net.dns_cache import RunScopedDnsCache
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.report import Report
from synapse_fedhealth.service import FedHealthService
from synapse_fedhealth.settings import RunSettings
from tests.unit.engine_helpers import WALL_CLOCK_START, fake_io
from tests.unit.fakes import (
    VERSION,
    FakeHttp,
    FakeResolver,
    FakeTargetConnection,
    FakeTls,
)
from tests.unit.insider_helpers import key_response, make_key, notary_info

KEY = make_key()
NOTARY_KEY = make_key("n_1")
SERVER = "example.com"
SERVER_IP = "203.0.113.7"
NOTARY_IP = "198.51.100.9"


class SynapseLikeHttp(FakeHttp):
    """Answers the signed probe as Synapse does when the signature passes
    (the probe room does not exist here)."""

    def get(self, url: str, **kw: Any) -> defer.Deferred[HttpResult]:
        if "/state_ids/" not in url:
            return super().get(url, **kw)
        self.requests.append((url, kw.get("connect_to"), kw.get("host_header")))
        return defer.succeed(
            HttpResult(
                url=url,
                host_header=kw.get("host_header") or "",
                sni=kw.get("sni") or "",
                status=403,
                body=b'{"errcode": "M_FORBIDDEN", "error": "not in room"}',
                headers={"content-type": ("application/json",)},
            )
        )


@attr.s(slots=True, auto_attribs=True)
class Run:
    report: Report
    http: FakeHttp
    tls: FakeTls
    dns_queries: int
    # The requests that rode a target's kept connection.
    ridden: list[str]
    connections: list[FakeTargetConnection]

    def handshakes_to(self, ip: str, port: int) -> int:
        """The TLS probes of `ip`, and every request to `ip:port` that did
        not ride the kept connection (each of those handshakes on its own)."""
        own = [
            url
            for url, connect_to, _ in self.http.requests
            if connect_to == (ip, port) and url not in self.ridden
        ]
        return self.tls.probed.count(ip) + len(own)


def _run(notaries: tuple[Any, ...]) -> Run:
    reactor = MemoryReactorClock()
    snapshot = HomeserverSnapshot(
        server_name=SERVER,
        public_baseurl=f"https://{SERVER}/",
        listeners=(
            ListenerInfo(
                index=0,
                type="http",
                port=8008,
                bind_addresses=("127.0.0.1",),
                resources=frozenset({"client", "federation"}),
                x_forwarded=True,
            ),
        ),
        signing_keys=(KEY,),
        trusted_key_servers=notaries,
    )
    keys = key_response(
        SERVER, KEY, valid_until_ts=int(WALL_CLOCK_START * 1000) + 86_400_000
    )
    http = SynapseLikeHttp(
        {
            ("/.well-known/matrix/server", "*"): (404, b""),
            ("/_matrix/federation/v1/version", SERVER_IP): VERSION,
            ("/_matrix/key/v2/server", SERVER_IP): (200, keys),
            ("/_matrix/key/v2/query", NOTARY_IP): (200, {"server_keys": []}),
        }
    )
    tls = FakeTls({SERVER_IP: "ok", NOTARY_IP: "ok"})
    dns = FakeResolver(
        {(SERVER, "A"): [SERVER_IP], ("notary.example.org", "A"): [NOTARY_IP]}
    )
    cache = RunScopedDnsCache(dns)
    ridden: list[str] = []
    made: list[FakeTargetConnection] = []

    def connect(target: Any) -> FakeTargetConnection:
        made.append(FakeTargetConnection(http, tls, target, ridden))
        return made[-1]

    def run_io(settings: RunSettings) -> Any:
        return fake_io(
            reactor,
            resolver=cache,
            http=http,
            tls=tls,
            targets=TargetConnections(connect),
        )

    service = FedHealthService(
        config=parse_fedhealth_config({"timeout": "5s"}),
        server_name=SERVER,
        snapshot=snapshot,
        clock=reactor,
        run_io=run_io,
        families=DefaultFamilies(snapshot, echo=NonceBook(secret=b"s" * 32)),
        runs_network=True,
        user_agent="Synapse/test",
    )
    d: defer.Deferred[Report] = service.get_report(refresh=True)
    reactor.advance(0)
    report: list[Report] = []
    d.addCallback(report.append)
    assert report, "the run finishes at once with fakes"
    return Run(report[0], http, tls, cache.queries_sent, ridden, made)


def _requests(http: FakeHttp) -> list[str]:
    return [url.split("?", 1)[0] for url, _, _ in http.requests]


def test_a_healthy_run_makes_eight_requests_and_four_dns_queries() -> None:
    run = _run(notaries=())
    http = run.http
    failed = [c.id for c in run.report.checks if c.status.value == "fail"]
    assert not failed
    # The echo goes through the client path and the federation path; the
    # eighth is the support well-known (client.support_well_known).
    assert len(http.requests) == 8, _requests(http)
    echoes = [(u, c) for u, c, _ in http.requests if "/fedhealth/echo/" in u]
    assert [c for _, c in echoes].count((SERVER_IP, 8448)) == 1
    # The server name's A, AAAA and its two SRV names; nothing asked twice.
    assert run.dns_queries == 4
    assert run.tls.probed == [SERVER_IP]


def test_a_healthy_run_makes_one_handshake_to_its_target() -> None:
    run = _run(notaries=())
    to_target = [u for u, c, _ in run.http.requests if c == (SERVER_IP, 8448)]
    # The version, the keys, the signed request and the federation echo all
    # ride the probe's connection: none makes a handshake of its own.
    kinds = ("/v1/version", "/key/v2/server", "/v1/state_ids/", "/fedhealth/echo/")
    assert sorted(k for u in to_target for k in kinds if k in u) == sorted(kinds)
    assert len(to_target) == len(kinds), to_target
    assert sorted(run.ridden) == sorted(to_target)
    assert run.handshakes_to(SERVER_IP, 8448) == 1
    # One connection for the target, closed when the run ended.
    assert len(run.connections) == 1 and run.connections[0].closed


def test_a_notary_costs_one_resolution_and_one_post() -> None:
    run = _run(notaries=(notary_info(NOTARY_KEY),))
    http, tls, dns_queries = run.http, run.tls, run.dns_queries
    extra = [u for u in _requests(http) if "notary.example.org" in u]
    # Its well-known (discovery) and the query; no version, keys or TLS probe.
    assert [u.rsplit("/", 3)[-3:] for u in extra] == [
        [".well-known", "matrix", "server"],
        ["key", "v2", "query"],
    ]
    assert len(http.requests) == 10  # the 8 of a healthy run, and these 2
    assert tls.probed == [SERVER_IP]
    # The notary's A, AAAA and two SRV names.
    assert dns_queries == 8
