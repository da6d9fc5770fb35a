"""What one run costs the network: every request and DNS question of a
healthy run, counted through the real families, runner and run-scoped DNS
cache, with fake I/O. A notary costs one resolution and one POST, never a
probe of its addresses."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from synapse_fedhealth.config import parse_fedhealth_config
from synapse_fedhealth.echo import NonceBook
from synapse_fedhealth.families import DefaultFamilies
from synapse_fedhealth.homeserver import HomeserverSnapshot, ListenerInfo
from synapse_fedhealth.net.dns_cache import RunScopedDnsCache
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.report import Report
from synapse_fedhealth.service import FedHealthService
from synapse_fedhealth.settings import RunSettings
from tests.unit.engine_helpers import WALL_CLOCK_START, fake_io
from tests.unit.fakes import VERSION, FakeHttp, FakeResolver, FakeTls
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


def _run(notaries: tuple[Any, ...]) -> tuple[Report, FakeHttp, FakeTls, int]:
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

    def run_io(settings: RunSettings) -> Any:
        return fake_io(reactor, resolver=cache, http=http, tls=tls)

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
    return report[0], http, tls, cache.queries_sent


def _requests(http: FakeHttp) -> list[str]:
    return [url.split("?", 1)[0] for url, _, _ in http.requests]


def test_a_healthy_run_makes_eight_requests_and_four_dns_queries() -> None:
    report, http, tls, dns_queries = _run(notaries=())
    failed = [c.id for c in report.checks if c.status.value == "fail"]
    assert not failed
    # The echo goes through the client path and the federation path; the
    # eighth is the support well-known (client.support_well_known).
    assert len(http.requests) == 8, _requests(http)
    echoes = [(u, c) for u, c, _ in http.requests if "/fedhealth/echo/" in u]
    assert [c for _, c in echoes].count((SERVER_IP, 8448)) == 1
    # The server name's A, AAAA and its two SRV names; nothing asked twice.
    assert dns_queries == 4
    assert tls.probed == [SERVER_IP]


def test_a_notary_costs_one_resolution_and_one_post() -> None:
    _, http, tls, dns_queries = _run(notaries=(notary_info(NOTARY_KEY),))
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
