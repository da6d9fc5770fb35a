"""This homeserver's own ip_range_blacklist / ip_range_whitelist: read as
Synapse reads them, matched as Synapse's federation client matches them, and
applied to discovery.addresses, federation.notary and redirects."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import attr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from synapse_fedhealth.config import parse_fedhealth_config
from synapse_fedhealth.echo import NonceBook
from synapse_fedhealth.families import DefaultFamilies
from synapse_fedhealth.homeserver import (
    HomeserverSnapshot,
    ListenerInfo,
    _federation_ip_ranges_from_raw,
)
from synapse_fedhealth.net.addresses import FederationIpRanges
from synapse_fedhealth.report import CheckResult, Report, Status
from synapse_fedhealth.service import FedHealthService
from synapse_fedhealth.settings import RunSettings
from tests.unit.engine_helpers import WALL_CLOCK_START, fake_io
from tests.unit.fakes import VERSION, FakeHttp, FakeResolver, FakeTls
from tests.unit.insider_helpers import key_response, make_key, notary_info
from tests.unit.test_config_lint_snapshot import (
    raw_snapshot,
    synapse_snapshot,
    write_homeserver,
)

KEY = make_key()
NOTARY_KEY = make_key("n_1")
SERVER = "example.com"
NOTARY = "notary.example.org"


def ranges(**raw: Any) -> FederationIpRanges:
    found = _federation_ip_ranges_from_raw(raw)
    assert found is not None
    return found


# -- reading and matching -----------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"ip_range_whitelist": ["10.1.0.0/16", "fd00:1::/32"]},
        {"ip_range_blacklist": ["203.0.113.0/24"], "ip_range_whitelist": ["10.0.0.1"]},
        {"federation_ip_range_blacklist": ["10.0.0.0/8"]},
    ],
)
def test_the_module_and_lint_read_the_same_ranges(
    tmp_path: Path, extra: dict[str, Any]
) -> None:
    path, _ = write_homeserver(tmp_path, **extra)
    from_synapse = synapse_snapshot(path).federation_ip_ranges
    from_raw = raw_snapshot(path).federation_ip_ranges
    assert from_synapse is not None
    assert from_synapse == from_raw


def test_legacy_federation_blacklist_has_no_whitelist(tmp_path: Path) -> None:
    path, _ = write_homeserver(
        tmp_path,
        federation_ip_range_blacklist=["10.0.0.0/8"],
        ip_range_whitelist=["10.1.0.0/16"],
    )
    found = synapse_snapshot(path).federation_ip_ranges
    assert found is not None
    # As Synapse: federation_ip_range_allowlist is None then.
    assert found.allowlist == ()
    assert found.refuses("10.1.2.3")
    assert not found.refuses("192.168.1.1")  # the legacy list replaced the default


def test_an_invalid_range_is_unknown_not_empty() -> None:
    assert _federation_ip_ranges_from_raw({"ip_range_whitelist": ["not-a-net"]}) is None


def test_ip_literal_names_ignore_the_whitelist() -> None:
    own = ranges(ip_range_whitelist=["10.1.0.0/16"])
    assert not own.refuses("10.1.2.3")
    assert own.refuses("10.1.2.3", ip_literal=True)
    assert own.refuses("10.2.0.1")
    assert not own.refuses("203.0.114.1")


ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=4).map(lambda a: str(ipaddress.IPv6Address(int(a)))),
    st.ip_addresses(v=4).map(
        lambda a: str(ipaddress.IPv6Address((0x2002 << 112) | (int(a) << 80)))
    ),
    st.sampled_from(["10.1.2.3", "::ffff:10.1.2.3", "fd00:1::5", "127.0.0.1", "::"]),
)


@settings(max_examples=500)
@given(address=ADDRESSES)
def test_refusal_is_synapse_own_decision(address: str) -> None:
    """Against synapse.http.client._is_ip_blocked with the IPSets Synapse's
    ServerConfig builds, IPv4-mapped, -compatible and 6to4 spellings
    included."""
    from netaddr import IPAddress  # type: ignore[import-untyped]
    from synapse.config.server import DEFAULT_IP_RANGE_BLOCKLIST, generate_ip_set
    from synapse.http.client import _is_ip_blocked

    whitelist = ["10.1.0.0/16", "fd00:1::/32"]
    own = ranges(ip_range_whitelist=whitelist)
    blocklist = generate_ip_set(DEFAULT_IP_RANGE_BLOCKLIST, ["0.0.0.0", "::"])
    allowlist = generate_ip_set(whitelist)
    ip = IPAddress(address)
    assert own.refuses(address) == _is_ip_blocked(ip, allowlist, blocklist)
    assert own.refuses(address, ip_literal=True) == _is_ip_blocked(ip, None, blocklist)


# -- through a whole run --------------------------------------------------------------


def _run(
    *,
    server_ip: str,
    notary_ips: dict[str, list[str]] | None = None,
    ip_ranges: FederationIpRanges | None,
) -> tuple[Report, FakeHttp, FakeTls]:
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
        trusted_key_servers=(notary_info(NOTARY_KEY),) if notary_ips else (),
        federation_ip_ranges=ip_ranges,
    )
    keys = key_response(
        SERVER, KEY, valid_until_ts=int(WALL_CLOCK_START * 1000) + 86_400_000
    )
    http = FakeHttp(
        {
            ("/.well-known/matrix/server", "*"): (404, b""),
            ("/_matrix/federation/v1/version", server_ip): VERSION,
            ("/_matrix/key/v2/server", server_ip): (200, keys),
            ("/_matrix/key/v2/query", "*"): (200, {"server_keys": []}),
        }
    )
    tls = FakeTls({server_ip: "ok"})
    records: dict[tuple[str, str], Any] = {(SERVER, "A"): [server_ip]}
    for qname, ips in (notary_ips or {}).items():
        records[(qname, "A")] = ips
    resolver = FakeResolver(records)

    def run_io(settings: RunSettings) -> Any:
        assert settings.ip_ranges == ip_ranges  # the snapshot's, into the run
        return fake_io(reactor, resolver=resolver, http=http, tls=tls)

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
    return report[0], http, tls


def _check(report: Report, check_id: str) -> CheckResult:
    (found,) = [c for c in report.checks if c.id == check_id]
    return found


def _asked(http: FakeHttp, path: str) -> list[Any]:
    return [connect for url, connect, _ in http.requests if url.endswith(path)]


def test_a_whitelisted_private_address_is_ok_and_still_probed() -> None:
    report, http, tls = _run(
        server_ip="10.1.2.3", ip_ranges=ranges(ip_range_whitelist=["10.1.0.0/16"])
    )
    addresses = _check(report, "discovery.addresses")
    assert addresses.status is Status.OK, addresses.summary
    assert "private federation declared by this server's ip_range_whitelist" in (
        addresses.summary
    )
    assert "peers need the same entry" in addresses.summary
    assert addresses.details["whitelisted"] == ["10.1.2.3"]
    assert "private" not in addresses.details
    # The self-check of a private address goes on: TLS, version and keys.
    assert tls.probed == ["10.1.2.3"]
    assert _check(report, "federation.version").status is Status.OK


@pytest.mark.parametrize(
    "own",
    [None, ranges(), ranges(ip_range_whitelist=["10.2.0.0/16"])],
    ids=["unknown", "default", "other-whitelist"],
)
def test_a_private_address_outside_the_whitelist_still_warns(
    own: FederationIpRanges | None,
) -> None:
    report, _, tls = _run(server_ip="10.1.2.3", ip_ranges=own)
    addresses = _check(report, "discovery.addresses")
    assert addresses.status is Status.WARN
    assert addresses.details["private"] == ["10.1.2.3"]
    assert "whitelisted" not in addresses.details
    assert tls.probed == ["10.1.2.3"]  # split-horizon self-check kept


def test_a_notary_the_blacklist_refuses_is_not_asked() -> None:
    report, http, _ = _run(
        server_ip="203.0.113.7",
        notary_ips={NOTARY: ["192.168.7.7"]},
        ip_ranges=ranges(),
    )
    notary = _check(report, "federation.notary")
    assert notary.status is Status.WARN
    assert notary.details["reason"] == "blocked_by_ip_range"
    assert notary.details["refused"] == ["192.168.7.7"]
    assert "this server's ip_range_blacklist refuses 192.168.7.7" in notary.summary
    assert "Synapse cannot ask this notary either; not asked" in notary.summary
    assert _asked(http, "/_matrix/key/v2/query") == []


def test_a_whitelisted_notary_is_asked() -> None:
    report, http, _ = _run(
        server_ip="203.0.113.7",
        notary_ips={NOTARY: ["192.168.7.7"]},
        ip_ranges=ranges(ip_range_whitelist=["192.168.7.0/24"]),
    )
    assert _asked(http, "/_matrix/key/v2/query") == [("192.168.7.7", 8448)]
    assert _check(report, "federation.notary").details["reason"] != (
        "blocked_by_ip_range"
    )


def test_without_known_ranges_a_private_notary_is_asked() -> None:
    _, http, _ = _run(
        server_ip="203.0.113.7", notary_ips={NOTARY: ["192.168.7.7"]}, ip_ranges=None
    )
    assert _asked(http, "/_matrix/key/v2/query") == [("192.168.7.7", 8448)]


def test_one_refused_address_makes_synapse_drop_the_whole_host() -> None:
    """Synapse's _IPBlockingResolver answers nothing for a host with a
    refused address, so the public one next to it (11.0.0.9) is no way in either."""
    report, http, _ = _run(
        server_ip="203.0.113.7",
        notary_ips={NOTARY: ["11.0.0.9", "10.0.0.9"]},
        ip_ranges=ranges(),
    )
    notary = _check(report, "federation.notary")
    assert notary.details["reason"] == "blocked_by_ip_range"
    assert notary.details["refused"] == ["10.0.0.9"]
    assert _asked(http, "/_matrix/key/v2/query") == []


def test_notary_reach_picks_a_host_synapse_can_use() -> None:
    from synapse_fedhealth.checks.notary import notary_reach
    from synapse_fedhealth.net.results import DnsOutcome, DnsResult
    from synapse_fedhealth.server_discovery import HostAddresses, Resolution, Target

    def host(name: str, *ips: str) -> HostAddresses:
        return HostAddresses(
            host=name,
            a=DnsResult(
                qname=name, rdtype="A", outcome=DnsOutcome.ANSWER, addresses=ips
            ),
            aaaa=DnsResult(qname=name, rdtype="AAAA", outcome=DnsOutcome.NO_ANSWER),
        )

    def target(ip: str, hostname: str) -> Target:
        return Target(
            ip=ip,
            port=8448,
            host_header=NOTARY,
            sni=NOTARY,
            hostname=hostname,
            source="srv",
        )

    resolution = Resolution(
        server_name=NOTARY,
        hosts=(
            host("a.example.org", "10.0.0.1"),
            host("b.example.org", "11.0.0.1"),
        ),
        targets=(
            target("10.0.0.1", "a.example.org"),
            target("11.0.0.1", "b.example.org"),
        ),
    )
    reach = notary_reach(resolution, ranges())
    assert [t.ip for t in reach.usable] == ["11.0.0.1"]
    assert reach.refused == ("10.0.0.1",)
    assert notary_reach(resolution, None).usable == resolution.targets
    literal = attr.evolve(
        resolution,
        server_name="10.0.0.1:8448",
        hosts=(),
        literal_targets=("10.0.0.1",),
        targets=(target("10.0.0.1", "10.0.0.1"),),
    )
    # A notary named by a whitelisted IP literal: Synapse's outer
    # BlocklistingAgentWrapper refuses it all the same.
    assert not notary_reach(literal, ranges(ip_range_whitelist=["10.0.0.1"])).usable


def _host(name: str, *ips: str) -> Any:
    from synapse_fedhealth.net.results import DnsOutcome, DnsResult
    from synapse_fedhealth.server_discovery import HostAddresses

    return HostAddresses(
        host=name,
        a=DnsResult(qname=name, rdtype="A", outcome=DnsOutcome.ANSWER, addresses=ips),
        aaaa=DnsResult(qname=name, rdtype="AAAA", outcome=DnsOutcome.NO_ANSWER),
    )


def test_only_the_addresses_outside_the_whitelist_warn() -> None:
    from synapse_fedhealth.checks.discovery import check_addresses

    result = check_addresses(
        [_host("m.example.com", "10.1.2.3", "192.168.5.5")], whitelisted={"10.1.2.3"}
    )
    assert result.status is Status.WARN
    assert result.details["private"] == ["192.168.5.5"]
    assert result.details["whitelisted"] == ["10.1.2.3"]
    assert "10.1.2.3" not in result.summary.split(" is loopback")[0]


def test_a_private_ip_literal_server_name_is_not_whitelisted() -> None:
    """Peers check a server name that is an IP literal against their
    blacklist alone: a whitelist entry does not make it reachable."""
    from synapse_fedhealth.checks.network_judge import judge_discovery
    from synapse_fedhealth.server_discovery import Resolution

    own = ranges(ip_range_whitelist=["10.1.0.0/16"])
    named = Resolution(
        server_name="m.example.com", hosts=(_host("m.example.com", "10.1.2.3"),)
    )
    literal = Resolution(server_name="10.1.2.3:8448", literal_targets=("10.1.2.3",))

    def addresses(resolution: Resolution) -> CheckResult:
        checks = judge_discovery(resolution, fallback_works=False, ip_ranges=own)
        (found,) = [c for c in checks if c.id == "discovery.addresses"]
        return found

    assert addresses(named).status is Status.OK
    assert addresses(literal).status is Status.WARN
