"""Both directions (SPEC 4.6) against real Synapses.

A is a real Synapse running the module; B is another real Synapse, served
over TLS by the lab's nginx under a name in the lab's DNS. Both resolve
through the lab's DNS in a private mount namespace (`PeerSynapse`), so A's
own resolver is a real system resolver that a scenario can break.

Each outbound scenario starts a fresh A with one outbound setting broken,
asks the module for a report, and confirms with Synapse itself: a client
request on A that makes A query B over federation (a remote profile).
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import logcontext_errors, tracebacks_from_us
from tests.integration.module_lab import ENDPOINT, MODULE, brief, find_check
from tests.integration.netlab.certs import Pki
from tests.integration.netlab.dns_server import DnsServer
from tests.integration.netlab.fixtures import *  # noqa: F403
from tests.integration.netlab.fixtures import require_root
from tests.integration.netlab.lab import Lab
from tests.integration.netlab.nginx import nginx_available
from tests.integration.netlab.peer import SHARED_SECRET, PeerSynapse
from tests.support.synapse_process import free_port, http_request, register_user

pytestmark = pytest.mark.integration

OUTBOUND_IDS = ("outbound.reach", "outbound.destinations", "federation.traffic")
# Short federation retries: a dead destination is in backoff after one
# failed transaction, within seconds.
FAST_FEDERATION = {
    "federation": {
        "max_long_retries": 1,
        "max_long_retry_delay": 500,
        "max_short_retries": 1,
        "max_short_retry_delay": 500,
        "destination_min_retry_interval": "1m",
    }
}


class Homeserver:
    """A PeerSynapse (own DNS namespace) with an admin token."""

    def __init__(self, synapse: PeerSynapse) -> None:
        self.synapse = synapse
        self.server_name = synapse.server_name
        self.token = register_user(
            synapse.base_url,
            SHARED_SECRET,
            f"admin-{secrets.token_hex(3)}",
            secrets.token_urlsafe(12),
            True,
        )

    @property
    def base_url(self) -> str:
        return self.synapse.base_url

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.synapse.port}"

    def report(self) -> dict[str, Any]:
        response = http_request(
            f"{self.base_url}{ENDPOINT}?refresh=true", token=self.token, timeout=60
        )
        assert response.status == 200, response.text
        report: dict[str, Any] = response.json()
        return report

    def client(self, method: str, path: str, body: Any = None, token: str = "") -> Any:
        return http_request(
            f"{self.base_url}{path}",
            method=method,
            token=token or self.token,
            body=body,
            timeout=90,
        )


class World:
    def __init__(self, lab: Lab, directory: Path) -> None:
        self.lab = lab
        self.directory = directory
        self.b_name = lab.server_name("b")
        self.b = Homeserver(
            PeerSynapse(
                directory / "b",
                dns_ip=lab.dns.host,
                ca_file=lab.ca_file,
                server_name=self.b_name,
                extra_config=FAST_FEDERATION,
            ).start()
        )
        self.bob = "bob"
        self.bob_token = register_user(
            self.b.base_url, SHARED_SECRET, self.bob, "bob-password-1", False
        )
        self.b_ip = lab.serve_federation(self.b_name, upstream=self.b.upstream)
        self.a_name = lab.server_name("a")
        self._stoppers: list[Callable[[], object]] = [self.b.synapse.stop]

    def start_a(
        self,
        label: str,
        *,
        dns_ip: str | None = None,
        module_options: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Homeserver:
        module = self.lab.module_config(
            startup_check=False,
            interval=0,
            timeout="8s",
            outbound_probe_servers=[self.b_name],
        )
        module.update(module_options or {})
        modules = [{"module": MODULE, "config": module}]
        modules = list(extra.pop("modules_before", [])) + modules
        config = {**FAST_FEDERATION, "modules": modules, **extra}
        synapse = PeerSynapse(
            self.directory / f"a-{label}",
            dns_ip=dns_ip or self.lab.dns.host,
            ca_file=self.lab.ca_file,
            server_name=self.a_name,
            extra_config=config,
        )
        synapse.start()
        self._stoppers.append(synapse.stop)
        # B must reach A too: it fetches A's key to check A's signed requests.
        self.lab.nginx.vhosts = [
            v for v in self.lab.nginx.vhosts if self.a_name not in v.server_names
        ]
        self.lab.serve_federation(
            self.a_name, upstream=f"http://127.0.0.1:{synapse.port}"
        )
        return Homeserver(synapse)

    def destinations_of(self, a: Homeserver) -> list[str]:
        """A's destinations table, read directly (sqlite)."""
        import sqlite3

        db = sqlite3.connect(
            f"file:{a.synapse.directory / 'homeserver.db'}?mode=ro", uri=True
        )
        try:
            return [r[0] for r in db.execute("SELECT destination FROM destinations")]
        finally:
            db.close()

    def assert_clean(self, a: Homeserver) -> None:
        """Synapse's logcontext rules kept, and no traceback of ours."""
        log = a.synapse.process.log_text()
        assert not logcontext_errors(log), logcontext_errors(log)
        assert not tracebacks_from_us(log), tracebacks_from_us(log)

    def remote_profile(self, a: Homeserver) -> Any:
        """A real client request on A that makes A ask B over federation."""
        user = urllib.parse.quote(f"@{self.bob}:{self.b_name}")
        return a.client("GET", f"/_matrix/client/v3/profile/{user}")

    def close(self) -> None:
        for stop in reversed(self._stoppers):
            try:
                stop()
            except Exception:
                pass


@pytest.fixture(scope="module")
def outbound_lab(
    tmp_path_factory: pytest.TempPathFactory,
    netlab_pki: Pki,
    netlab_dns: DnsServer,
    netlab_peer_provider: Callable[[], PeerSynapse],
) -> Iterator[Lab]:
    require_root()
    if not nginx_available():
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    if netlab_dns.port != 53:
        pytest.skip("the Synapses need the lab's DNS server on port 53 (root)")
    lab = Lab(
        tmp_path_factory.mktemp("outbound-lab"),
        pki=netlab_pki,
        dns=netlab_dns,
        peer=netlab_peer_provider,
    )
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, outbound_lab: Lab
) -> Iterator[World]:
    the_world = World(outbound_lab, tmp_path_factory.mktemp("outbound"))
    try:
        yield the_world
    finally:
        the_world.close()


def _reach(a: Homeserver) -> tuple[dict[str, Any], dict[str, Any]]:
    report = a.report()
    return report, find_check(report, "outbound.reach")


# -- outbound.reach: healthy, then broken four ways -------------------------------


def test_outbound_reach_ok(world: World) -> None:
    a = world.start_a("healthy")
    try:
        report, reach = _reach(a)
        assert reach["status"] == "ok", brief(report, OUTBOUND_IDS)
        assert world.b_name in reach["details"]["reached"], reach
        # No side effect: the probe left no row for B in Synapse's table.
        assert world.b_name not in world.destinations_of(a)
        print(
            f"\nrun cost: report duration {report['duration_ms']} ms, "
            f"outbound.reach {reach['details']['servers'][0]['elapsed_ms']} ms "
            f"for {reach['details']['servers'][0]['hosts']}"
        )
        assert world.remote_profile(a).status == 200
        world.assert_clean(a)
    finally:
        a.synapse.stop()


def test_outbound_blocked_by_ip_range(world: World) -> None:
    # Synapse's default blacklist covers 127.0.0.0/8, where B is.
    a = world.start_a("blocked", ip_range_whitelist=[])
    try:
        report, reach = _reach(a)
        assert reach["status"] == "fail", brief(report, OUTBOUND_IDS)
        assert reach["details"]["reason"] == "blocked_by_ip_range", reach
        assert "ip_range_whitelist" in reach["fix"], reach
        assert report["verdict"] == "broken"
        assert world.b_name not in world.destinations_of(a)
        assert world.remote_profile(a).status != 200
        world.assert_clean(a)
    finally:
        a.synapse.stop()


def test_outbound_ca_does_not_cover_the_peer(world: World, tmp_path: Path) -> None:
    other_ca = Pki(tmp_path / "other-ca")
    a = world.start_a("other-ca", federation_custom_ca_list=[str(other_ca.ca_file)])
    try:
        report, reach = _reach(a)
        assert reach["status"] == "fail", brief(report, OUTBOUND_IDS)
        assert reach["details"]["reason"] == "certificate", reach
        assert reach["details"].get("certificate_reason"), reach
        assert "federation_custom_ca_list" in reach["fix"], reach
        assert world.remote_profile(a).status != 200
        world.assert_clean(a)
    finally:
        a.synapse.stop()


def test_outbound_dead_proxy(world: World) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    a = world.start_a(
        "dead-proxy",
        https_proxy=dead,
        module_options={"startup_check": True, "startup_delay": "1s"},
    )
    try:
        # The start-up run's problem lines: one names the proxy.
        assert a.synapse.process.wait_for_log(r"outbound\.reach: .*proxy", 30)
        lines = [
            w
            for w in a.synapse.process.fedhealth_warnings()
            if w.startswith("outbound.reach")
        ]
        assert len(lines) == 1, lines
        assert dead in lines[0] and "https_proxy" in lines[0], lines
        report, reach = _reach(a)
        assert reach["status"] == "fail", brief(report, OUTBOUND_IDS)
        assert reach["details"]["reason"] == "proxy", reach
        assert "https_proxy" in reach["fix"], reach
        assert dead in reach["summary"], reach
        assert world.remote_profile(a).status != 200
        world.assert_clean(a)
    finally:
        a.synapse.stop()


def test_outbound_broken_system_resolver(world: World) -> None:
    # Nothing listens on this address: Synapse's own resolver fails, while
    # the module's dns_servers (the lab's DNS) still works.
    dead_dns = world.lab.ip("dead-dns")
    a = world.start_a("broken-resolver", dns_ip=dead_dns)
    try:
        report, reach = _reach(a)
        assert reach["status"] == "fail", brief(report, OUTBOUND_IDS)
        assert reach["details"]["reason"] == "dns", reach
        assert "dns_servers" in reach["fix"], reach
        assert world.remote_profile(a).status != 200
        world.assert_clean(a)
    finally:
        a.synapse.stop()


# -- config.signing_key: a controlled banned key ----------------------------------


def _padded_verify_key(directory: Path) -> str:
    from signedjson.key import get_verify_key, read_signing_keys

    with open(directory / "signing.key") as f:
        key = read_signing_keys(f)[0]
    return base64.b64encode(bytes(get_verify_key(key).encode())).decode()


def test_banned_signing_key(world: World) -> None:
    directory = world.directory / "a-banned"
    probe = PeerSynapse(
        directory,
        dns_ip=world.lab.dns.host,
        ca_file=world.lab.ca_file,
        server_name=world.a_name,
    )
    probe.process.generate_keys()
    padded = _padded_verify_key(directory)
    assert padded.endswith("="), "Synapse's list is padded base64"
    a = world.start_a(
        "banned",
        modules_before=[
            {
                "module": "tests.integration.banned_key_module.BanOwnKey",
                "config": {"padded_key": padded},
            }
        ],
    )
    try:
        report = a.report()
        signing = [c for c in report["checks"] if c["id"] == "config.signing_key"]
        banned = [c for c in signing if c["details"].get("reason") == "banned_key"]
        assert banned and banned[0]["status"] == "fail", signing
        assert "Rotate" in banned[0]["fix"]
        assert report["verdict"] == "broken"
        warnings = a.synapse.process.fedhealth_warnings()
        assert any("publicly known" in w for w in warnings), warnings
        world.assert_clean(a)
    finally:
        a.synapse.stop()


# -- real traffic, then the peer goes down -----------------------------------------


def _wait(
    what: str, get: Callable[[], Any], ok: Callable[[Any], bool], s: float
) -> Any:
    end = time.monotonic() + s
    value = get()
    while not ok(value) and time.monotonic() < end:
        time.sleep(1)
        value = get()
    assert ok(value), f"{what}: {value}"
    return value


def test_real_traffic_then_peer_down(world: World) -> None:
    a = world.start_a("traffic")
    try:
        lab = world.lab
        created = a.client(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}
        )
        assert created.status == 200, created.text
        room = created.json()["room_id"]
        joined = world.b.client(
            "POST",
            f"/_matrix/client/v3/join/{urllib.parse.quote(room)}"
            f"?server_name={world.a_name}",
            {},
            token=world.bob_token,
        )
        assert joined.status == 200, joined.text
        for who, token, hs in (("a", a.token, a), ("b", world.bob_token, world.b)):
            sent = hs.client(
                "PUT",
                f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/"
                f"m.room.message/{who}-1",
                {"msgtype": "m.text", "body": f"hello from {who}"},
                token=token,
            )
            assert sent.status == 200, sent.text

        def traffic() -> dict[str, Any]:
            return find_check(a.report(), "federation.traffic")

        seen = _wait(
            "federation.traffic names B",
            traffic,
            lambda c: world.b_name in c["summary"],
            40,
        )
        assert seen["status"] == "ok", seen
        assert seen["details"]["sources"], seen

        # B goes down: its Synapse and its vhost; A keeps sending.
        world.b.synapse.stop()
        lab.with_nginx(
            *[v for v in lab.nginx.vhosts if world.b_name not in v.server_names]
        )
        for n in range(2):
            a.client(
                "PUT",
                f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/"
                f"m.room.message/a-down-{n}",
                {"msgtype": "m.text", "body": "anyone there?"},
            )

        def destinations() -> dict[str, Any]:
            return find_check(a.report(), "outbound.destinations")

        check = _wait(
            "outbound.destinations names B in backoff",
            destinations,
            lambda c: world.b_name in c["summary"],
            60,
        )
        assert check["status"] == "warn", check
        assert "their own problem" in check["fix"], check
        worst = check["details"]["worst"]
        assert worst[0]["destination"] == world.b_name, check
        assert worst[0]["failure_ts"], check
        world.assert_clean(a)
    finally:
        a.synapse.stop()
