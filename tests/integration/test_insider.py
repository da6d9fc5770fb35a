"""The insider checks against real components (SPEC 4.4 key_matches_local,
signed_request, notary; 4.5 proxy.forwarded_headers, client.well_known).

A real Synapse runs the module behind the lab's nginx (TLS from the lab's
CA, names in the lab's DNS zone); each scenario changes nginx/DNS and asks
the admin endpoint for a fresh report (`?refresh=true`). A second real
Synapse (the lab's peer) is the trusted key server for `federation.notary`.

With FEDHEALTH_INSIDER_ROWS=<file> the observed rows (scenario, check,
status, reason, summary, duration) are written there as JSON at the end;
benchmarks/results/insider.md is made from them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.module_lab import (
    ModuleHomeserver,
    append_rows,
    brief,
    find_check,
)
from tests.integration.netlab.certs import CertFiles, Pki
from tests.integration.netlab.dns_server import DnsServer
from tests.integration.netlab.fixtures import *  # noqa: F403
from tests.integration.netlab.fixtures import require_root
from tests.integration.netlab.lab import Lab
from tests.integration.netlab.nginx import (
    ProxyVariant,
    Vhost,
    WellKnown,
    nginx_available,
    well_known_server,
)
from tests.integration.netlab.peer import PeerSynapse, PlainSynapse

pytestmark = pytest.mark.integration

INSIDER_IDS = (
    "federation.version",
    "federation.keys",
    "federation.key_matches_local",
    "federation.signed_request",
    "federation.notary",
    "proxy.forwarded_headers",
    "client.well_known",
)
# A notary that can't reach us retries (Synapse's short retries: ~3.5 s on a
# refused port) before it answers; the run's budget must cover that.
NOTARY_RUN_TIMEOUT = "15s"


def cors() -> dict[str, str]:
    return {"Access-Control-Allow-Origin": "*"}


class InsiderWorld:
    """The module-Synapse `main` (server name `name`, public_baseurl
    https://<name>/) behind nginx on `ip`:443; other Synapses on demand."""

    def __init__(self, lab: Lab, directory: Path) -> None:
        self.lab = lab
        self.directory = directory
        self.name = lab.server_name("insider")
        self.ip = lab.ip("insider")
        self.cert: CertFiles = lab.cert(self.name)
        self.main = ModuleHomeserver(
            directory / "main",
            self.name,
            lab,
            public_baseurl=f"https://{self.name}/",
        ).start()
        self._stoppers: list[Callable[[], object]] = [self.main.stop]
        self._other: PlainSynapse | None = None
        self._twin: PlainSynapse | None = None
        self.rows: list[dict[str, Any]] = []

    @property
    def target(self) -> str:
        return f"{self.ip}:443"

    @property
    def other(self) -> PlainSynapse:
        """Another homeserver, with another name (and key)."""
        if self._other is None:
            other_name = self.lab.server_name("other")
            self._other = PlainSynapse(self.directory / "other", other_name).start()
            self._stoppers.append(self._other.stop)
        return self._other

    @property
    def twin(self) -> PlainSynapse:
        """Another homeserver with *our* server name and its own key (an old
        install, a second container)."""
        if self._twin is None:
            self._twin = PlainSynapse(self.directory / "twin", self.name).start()
            self._stoppers.append(self._twin.stop)
        return self._twin

    def vhost(
        self,
        *,
        proxy: ProxyVariant = ProxyVariant.CORRECT,
        upstream: str | None = None,
        well_known_client: WellKnown | None | str = "auto",
    ) -> Vhost:
        client = (
            WellKnown(
                {"m.homeserver": {"base_url": f"https://{self.name}/"}},
                headers=cors(),
            )
            if well_known_client == "auto"
            else well_known_client
        )
        assert not isinstance(client, str)
        return Vhost(
            address=self.ip,
            server_names=(self.name,),
            cert=self.cert,
            well_known_server=well_known_server(f"{self.name}:443"),
            well_known_client=client,
            proxy=proxy,
            upstream=upstream or self.main.upstream,
        )

    def serve(self, *vhosts: Vhost) -> None:
        self.lab.with_zone({self.name: {"A": self.ip}})
        self.lab.with_nginx(*vhosts)

    def observe(self, scenario: str, *ids: str) -> dict[str, Any]:
        report = self.main.report()
        self.record(scenario, report, ids)
        return report

    def record(
        self, scenario: str, report: dict[str, Any], ids: tuple[str, ...]
    ) -> None:
        for check in report["checks"]:
            if check["id"] in ids:
                self.rows.append(row(scenario, report, check))

    def close(self) -> None:
        for stop in reversed(self._stoppers):
            stop()


def row(scenario: str, report: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    details = check.get("details") or {}
    return {
        "scenario": scenario,
        "check": check["id"],
        "target": check.get("target"),
        "status": check["status"],
        "reason": details.get("reason"),
        "http_status": details.get("http_status"),
        "summary": check["summary"],
        "fix": check.get("fix"),
        "verdict": report["verdict"],
        "duration_ms": report["duration_ms"],
    }


def measure_run(
    lab: Lab, hs: ModuleHomeserver, scenario: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run through the admin endpoint (the same runner as a periodic
    run), and what it cost: wall time, HTTP requests that reached nginx (its
    access log, our lab's control requests left out) and DNS queries that
    reached the lab's DNS server (its query log)."""
    log_before = len(lab.nginx.access_log_text().splitlines())
    lab.dns.clear_queries()
    began = time.monotonic()
    report = hs.report()
    wall_s = time.monotonic() - began
    time.sleep(0.3)  # a notary's own late requests (it answered already)
    requests = [
        line
        for line in lab.nginx.access_log_text().splitlines()[log_before:]
        if "/__netlab/" not in line
    ]
    paths: dict[str, int] = {}
    for line in requests:
        match = re.search(r'"([A-Z]+) (\S+) HTTP', line)
        path = "?" if match is None else f"{match[1]} {match[2].split('?')[0]}"
        if "/fedhealth/echo/" in path:
            path = path.rsplit("/", 1)[0] + "/<nonce>"
        if "/state_ids/" in path:
            path = path.split("/state_ids/")[0] + "/state_ids/<probe room>"
        paths[path] = paths.get(path, 0) + 1
    queries: dict[str, int] = {}
    for q in lab.dns.queries:
        key = f"{q.rdtype} {q.name}"
        queries[key] = queries.get(key, 0) + 1
    cost = {
        "scenario": scenario,
        "check": "(run cost)",
        "duration_ms": report["duration_ms"],
        "endpoint_wall_ms": round(wall_s * 1000),
        "http_requests": len(requests),
        "http_by_path": dict(sorted(paths.items())),
        "dns_queries": sum(queries.values()),
        "dns_by_name": dict(sorted(queries.items())),
        "verdict": report["verdict"],
    }
    return report, cost


@pytest.fixture(scope="module")
def insider_lab(
    tmp_path_factory: pytest.TempPathFactory,
    netlab_pki: Pki,
    netlab_dns: DnsServer,
    netlab_peer_provider: Callable[[], PeerSynapse],
) -> Iterator[Lab]:
    require_root()
    if not nginx_available():
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    directory = tmp_path_factory.mktemp("insider-lab")
    lab = Lab(directory, pki=netlab_pki, dns=netlab_dns, peer=netlab_peer_provider)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, insider_lab: Lab
) -> Iterator[InsiderWorld]:
    the_world = InsiderWorld(insider_lab, tmp_path_factory.mktemp("insider"))
    try:
        yield the_world
    finally:
        try:
            the_world.close()
        finally:
            append_rows(the_world.rows)


# -- 1. the proxy rewrites the URI -------------------------------------------------


def test_signed_request_uri_rewrite(world: InsiderWorld) -> None:
    world.serve(world.vhost(proxy=ProxyVariant.URI_REWRITE))
    report = world.observe(
        "nginx proxy_pass with a URI (URI_REWRITE)",
        "federation.version",
        "federation.signed_request",
    )
    ids = ("federation.version", "federation.signed_request")
    version = find_check(report, "federation.version", world.target)
    assert version["status"] == "ok", brief(report, ids)
    signed = find_check(report, "federation.signed_request", world.target)
    assert signed["status"] == "fail", brief(report, ids)
    assert signed["details"]["reason"] == "uri_rewritten", signed
    assert signed["details"]["http_status"] == 401, signed
    assert "Invalid signature" in signed["summary"], signed
    assert "proxy_pass" in signed["fix"], signed
    # The exact request is recorded: a percent-encoded path, our Host and SNI.
    assert "%21fedhealth-probe-" in signed["details"]["url"], signed
    assert report["verdict"] == "broken"


def test_signed_request_correct_proxy(world: InsiderWorld) -> None:
    world.serve(world.vhost(proxy=ProxyVariant.CORRECT))
    report = world.observe(
        "nginx proxy_pass without a URI (CORRECT)",
        "federation.version",
        "federation.signed_request",
        "federation.key_matches_local",
    )
    ids = (
        "federation.version",
        "federation.signed_request",
        "federation.key_matches_local",
    )
    signed = find_check(report, "federation.signed_request", world.target)
    assert signed["status"] == "ok", brief(report, ids)
    assert signed["details"]["auth_passed"] is True, signed
    assert signed["details"]["http_status"] == 403, signed  # "Host not in room."
    local = find_check(report, "federation.key_matches_local", world.target)
    assert local["status"] == "ok", brief(report, ids)
    assert world.main.key_ids()[0] in local["summary"]
    assert report["federation_ok"] is True, brief(report)


# -- 2. the public address reaches another homeserver ------------------------------


def test_other_server_behind_the_proxy(world: InsiderWorld) -> None:
    other = world.other
    world.serve(world.vhost(upstream=other.upstream))
    report = world.observe(
        "the vhost proxies to another homeserver (another server_name)",
        "federation.keys",
        "federation.key_matches_local",
        "federation.signed_request",
    )
    ids = (
        "federation.keys",
        "federation.key_matches_local",
        "federation.signed_request",
    )
    keys = find_check(report, "federation.keys", world.target)
    assert keys["status"] == "fail", brief(report, ids)
    assert other.server_name in keys["summary"], keys
    local = find_check(report, "federation.key_matches_local", world.target)
    assert local["status"] == "fail", brief(report, ids)
    assert local["details"]["served_server_name"] == other.server_name, local
    assert local["details"]["reason"] == "other_server", local
    assert other.server_name in local["summary"], local
    signed = find_check(report, "federation.signed_request", world.target)
    assert signed["status"] == "fail", brief(report, ids)
    assert signed["details"]["reason"] == "destination_mismatch", signed
    assert report["verdict"] == "broken"


def test_same_name_other_key_behind_the_proxy(world: InsiderWorld) -> None:
    twin = world.twin
    ours, theirs = world.main.key_ids(), twin.key_ids()
    assert ours != theirs
    world.serve(world.vhost(upstream=twin.upstream))
    report = world.observe(
        "the vhost proxies to another homeserver with our server_name and another key",
        "federation.keys",
        "federation.key_matches_local",
        "federation.signed_request",
    )
    ids = (
        "federation.keys",
        "federation.key_matches_local",
        "federation.signed_request",
    )
    local = find_check(report, "federation.key_matches_local", world.target)
    assert local["status"] == "fail", brief(report, ids)
    for key_id in ours + theirs:
        assert key_id in local["summary"], local
    assert local["details"]["served_key_ids"] == theirs, local
    assert local["details"]["reason"] == "other_key", local
    assert local["details"]["local_key_ids"] == ours, local
    # The served key response itself is well-formed: only the insider sees it.
    keys = find_check(report, "federation.keys", world.target)
    assert keys["status"] == "ok", brief(report, ids)
    signed = find_check(report, "federation.signed_request", world.target)
    assert signed["status"] == "fail", brief(report, ids)
    assert report["verdict"] == "broken"


# -- 3. forwarded headers ----------------------------------------------------------


def test_forwarded_headers_missing(world: InsiderWorld) -> None:
    world.serve(world.vhost(proxy=ProxyVariant.NO_FORWARDED_HEADERS))
    report = world.observe(
        "nginx without proxy_set_header (NO_FORWARDED_HEADERS)",
        "proxy.forwarded_headers",
    )
    check = find_check(report, "proxy.forwarded_headers")
    assert check["status"] == "warn", brief(report, ("proxy.forwarded_headers",))
    problems = " ".join(check["details"]["problems"])
    assert "X-Forwarded-For did not arrive" in problems, check
    assert "X-Forwarded-Proto did not arrive" in problems, check
    assert "Host header arrived as" in problems, check
    assert check["details"]["proxied"] is True
    assert check["details"]["received"]["listener"]["port"] == world.main.port
    assert check["details"]["url"].startswith(
        f"https://{world.name}/_synapse/client/fedhealth/echo/"
    ), check


def test_forwarded_headers_correct(world: InsiderWorld) -> None:
    world.serve(world.vhost(proxy=ProxyVariant.CORRECT))
    report = world.observe(
        "nginx with X-Forwarded-For/Proto and Host, listener x_forwarded: true",
        "proxy.forwarded_headers",
    )
    check = find_check(report, "proxy.forwarded_headers")
    assert check["status"] == "ok", brief(report, ("proxy.forwarded_headers",))
    received = check["details"]["received"]
    assert received["x_forwarded_proto"] == "https", received
    assert received["x_forwarded_for"], received
    assert received["host"] == world.name, received
    assert received["listener"]["x_forwarded"] is True, received


def test_run_cost_without_notary(world: InsiderWorld) -> None:
    """Cost of one run of a working setup (no trusted key servers)."""
    world.serve(world.vhost(proxy=ProxyVariant.CORRECT))
    report, cost = measure_run(
        world.lab, world.main, "cost of one run (working, no notary)"
    )
    world.rows.append(cost)
    assert report["verdict"] == "degraded", brief(report)  # loopback warning
    assert cost["http_requests"] >= 6, cost
    assert cost["dns_queries"] >= 2, cost


# -- 4. client well-known ----------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "body", "headers", "status", "fragment"),
    [
        ("base_url = public_baseurl, CORS *", "ours", True, "ok", "points clients to"),
        ("no Access-Control-Allow-Origin", "ours", False, "warn", "Access-Control-Allow-Origin: *` is missing"),
        ("base_url is another URL", "wrong", True, "warn", "`m.homeserver.base_url` is 'https://elsewhere.test/'"),
    ],
    ids=["correct", "no_cors", "wrong_base_url"],
)  # fmt: skip
def test_client_well_known(
    world: InsiderWorld,
    label: str,
    body: str,
    headers: bool,
    status: str,
    fragment: str,
) -> None:
    base_url = f"https://{world.name}/" if body == "ours" else "https://elsewhere.test/"
    wk = WellKnown(
        {"m.homeserver": {"base_url": base_url}}, headers=cors() if headers else {}
    )
    world.serve(world.vhost(well_known_client=wk))
    report = world.observe(f"client well-known: {label}", "client.well_known")
    check = find_check(report, "client.well_known")
    assert check["status"] == status, brief(report, ("client.well_known",))
    assert fragment in check["summary"], check
    assert check["details"]["url"] == f"https://{world.name}/.well-known/matrix/client"


def test_forwarded_headers_listener_ignores_them(world: InsiderWorld) -> None:
    """The proxy sends the headers, but the listener has `x_forwarded: false`
    (Synapse restarted with that config; last of this world's tests)."""
    world.main.stop()
    world.main.process.config["listeners"][0]["x_forwarded"] = False
    world.main.start()
    world.serve(world.vhost(proxy=ProxyVariant.CORRECT))
    report = world.observe(
        "nginx with X-Forwarded-For/Proto and Host, listener x_forwarded: false",
        "proxy.forwarded_headers",
    )
    check = find_check(report, "proxy.forwarded_headers")
    assert check["status"] == "warn", brief(report, ("proxy.forwarded_headers",))
    assert check["details"]["received"]["listener"]["x_forwarded"] is False
    assert "has `x_forwarded` off" in check["summary"], check
    assert "x_forwarded: true" in check["fix"], check


# -- 5. the notary ------------------------------------------------------------------


class NotaryWorld:
    """A module-Synapse `hs` (server name `name`) whose trusted key server is
    the lab's peer, served by nginx as `peer.netlab.test` on its own address.
    `name`'s well-known (on `ip_front`) delegates to `fed`:443 (on `ip_fed`),
    so "our federation port is closed" is the `fed` vhost missing while the
    well-known (cached by the peer) and the notary stay up."""

    def __init__(self, lab: Lab, directory: Path, peer: PeerSynapse) -> None:
        self.lab = lab
        self.peer = peer
        self.name = lab.server_name("notary")
        self.fed = f"fed.{self.name}"
        self.ip_front = lab.ip("notary-front")
        self.ip_fed = lab.ip("notary-fed")
        self.ip_peer = lab.ip("notary-peer")
        verify_keys = {
            key_id: entry["key"]
            for key_id, entry in _peer_keys(peer)["verify_keys"].items()
        }
        self.hs = ModuleHomeserver(
            directory / "hs",
            self.name,
            lab,
            public_baseurl=f"https://{self.name}/",
            module={"timeout": NOTARY_RUN_TIMEOUT},
            trusted_key_servers=[
                {"server_name": peer.server_name, "verify_keys": verify_keys}
            ],
            # The notary is on loopback, which Synapse's default
            # ip_range_blacklist refuses: a private federation with it
            # whitelists its address (else neither Synapse nor the module
            # may ask it). Only that one: our own addresses stay private.
            ip_range_whitelist=[f"{self.ip_peer}/32"],
        )
        self.hs.start()
        self.front = Vhost(
            address=self.ip_front,
            server_names=(self.name,),
            cert=lab.cert(self.name),
            well_known_server=well_known_server(f"{self.fed}:443"),
            well_known_client=WellKnown(
                {"m.homeserver": {"base_url": f"https://{self.name}/"}},
                headers=cors(),
            ),
            proxy=ProxyVariant.CORRECT,  # the client API (and the echo)
            upstream=self.hs.upstream,
        )
        self.federation = Vhost(
            address=self.ip_fed,
            server_names=(self.fed,),
            cert=lab.cert(self.fed),
            upstream=self.hs.upstream,
        )
        self.notary = Vhost(
            address=self.ip_peer,
            server_names=(peer.server_name,),
            cert=lab.cert(peer.server_name),
            well_known_server=well_known_server(f"{peer.server_name}:443"),
            upstream=f"http://127.0.0.1:{peer.port}",
        )
        lab.with_zone(
            {
                self.name: {"A": self.ip_front},
                self.fed: {"A": self.ip_fed},
                peer.server_name: {"A": self.ip_peer},
            }
        )

    def reachable(self, yes: bool) -> None:
        vhosts = [self.front, self.notary]
        if yes:
            vhosts.append(self.federation)
        self.lab.with_nginx(*vhosts)

    def key_fetches(self) -> int:
        """How many GET /_matrix/key/v2/server reached our Synapse (its
        access log; nginx's log mixes in the notary's own keys)."""
        log = self.hs.process.log_text()
        return len(
            re.findall(r"Processed request: .*\"GET /_matrix/key/v2/server HTTP", log)
        )


def _peer_keys(peer: PeerSynapse) -> dict[str, Any]:
    from tests.support.synapse_process import http_request

    keys: dict[str, Any] = http_request(
        f"{peer.base_url}/_matrix/key/v2/server", timeout=10
    ).json()
    return keys


@pytest.fixture(scope="module")
def notary_world(
    tmp_path_factory: pytest.TempPathFactory,
    insider_lab: Lab,
    world: InsiderWorld,
) -> Iterator[NotaryWorld]:
    peer = insider_lab.peer()
    the_world = NotaryWorld(insider_lab, tmp_path_factory.mktemp("notary"), peer)
    try:
        yield the_world
    finally:
        the_world.hs.stop()
        # Later tests of the session (test_scenarios) set their own zone.


def test_notary(notary_world: NotaryWorld, world: InsiderWorld) -> None:
    w = notary_world
    ids = ("federation.notary", "connection.reachable")
    # The peer has never seen this name: nothing cached.
    assert w.peer.cached_keys(w.name) == []

    # a) Our federation port is closed: the notary answers 200 without our key.
    w.reachable(False)
    report = w.hs.report()
    world.record("notary: our federation port closed (fresh notary)", report, ids)
    notary = find_check(report, "federation.notary", w.peer.server_name)
    assert notary["status"] == "fail", brief(report, ids)
    assert notary["details"]["http_status"] == 200, notary
    assert notary["details"]["reason"] == "no_keys", notary
    assert report["verdict"] == "broken"

    # b) Reachable: the notary fetches our key from outside.
    w.reachable(True)
    before = w.key_fetches()
    report, cost = measure_run(
        w.lab, w.hs, "cost of one run (working, one notary that fetches our key)"
    )
    world.rows.append(cost)
    world.record("notary: reachable", report, ids)
    notary = find_check(report, "federation.notary", w.peer.server_name)
    assert notary["status"] == "ok", brief(report, ids)
    assert notary["details"]["notary_signature"] == "valid", notary
    assert "from the outside" in notary["summary"], notary
    fetched_b = w.key_fetches() - before
    # Ours (federation.keys) and the notary's own fetch.
    assert fetched_b == 2, w.hs.process.log_text()[-3000:]

    # c) Asked again at once: does our minimum_valid_until_ts make the notary
    # fetch again, or does it answer from its cache?
    before = w.key_fetches()
    report, cost = measure_run(
        w.lab, w.hs, "cost of one run (working, one notary, notary cache warm)"
    )
    world.rows.append(cost)
    world.record("notary: reachable, asked again", report, ids)
    notary = find_check(report, "federation.notary", w.peer.server_name)
    assert notary["status"] == "ok", brief(report, ids)
    fetched_c = w.key_fetches() - before
    minimum = notary["details"]["minimum_valid_until_ts"]
    valid_until = notary["details"]["valid_until_ts"]
    world.rows.append(
        {
            "scenario": "notary: fetches per run",
            "check": "federation.notary",
            "status": notary["status"],
            "fetched_first": fetched_b,
            "fetched_again": fetched_c,
            "minimum_valid_until_ts": minimum,
            "valid_until_ts": valid_until,
            "now_ms": int(time.time() * 1000),
        }
    )
    # Documented behaviour (checks/notary.py): a copy the notary fetched
    # within the last half key_refresh_interval satisfies the minimum, so the
    # notary answers from its cache (only our own federation.keys fetch).
    assert fetched_c == 1, (fetched_c, minimum, valid_until)
    assert valid_until >= minimum

    # d) Closed again: with a fresh cached copy the notary still says ok (see
    # c); a notary that has no fresh copy says fail (a). A reset peer is that.
    w.reachable(False)
    report = w.hs.report()
    world.record("notary: port closed after a successful fetch", report, ids)
    assert report["verdict"] == "broken", brief(report, ids)
    assert find_check(report, "connection.reachable")["details"]["reason"] == "refused"
    # Recorded, not asserted: ok today (the cached copy), see c).
    find_check(report, "federation.notary", w.peer.server_name)
