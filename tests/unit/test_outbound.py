"""SPEC 4.6 with fakes: outbound_probe_servers, the banned signing key, each
`outbound.reach` reason, `outbound.destinations`, `federation.traffic`,
`client.support_well_known`, the once-a-minute rule, the families and the
outbound metric. Real Synapses prove the same in
tests/integration/test_outbound.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY
from synapse.module_api.errors import ConfigError
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from synapse_fedhealth import FedHealthModule
from synapse_fedhealth.checks import outbound as ob
from synapse_fedhealth.checks.config_lint import (
    banned_signing_keys,
    check_signing_key,
)
from synapse_fedhealth.checks.outbound import (
    DestinationRow,
    DestinationsRecord,
    HostLookup,
    OutboundProbe,
    PathAnswer,
    judge_destinations,
    judge_outbound_reach,
)
from synapse_fedhealth.checks.support_wellknown import (
    judge_support_well_known,
    judge_support_well_known_error,
)
from synapse_fedhealth.checks.traffic import TrafficRecord, judge_traffic
from synapse_fedhealth.config import FedHealthConfigError, parse_fedhealth_config
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.outbound import (
    OutboundEnvironment,
    answer_from_error,
    error_chain,
    probe_servers_for,
)
from synapse_fedhealth.families.outbound import OutboundFamily, TrafficFamily
from synapse_fedhealth.homeserver import HomeserverSnapshot, SigningKeyInfo
from synapse_fedhealth.metrics import record_report
from synapse_fedhealth.render.text import problem_line
from synapse_fedhealth.report import Report, fail, ok
from synapse_fedhealth.third_party import ThirdPartyAnswers

REMOTE = "remote.example"
OK_VERSION = PathAnswer(
    ob.VERSION_PATH,
    200,
    json.dumps({"server": {"name": "Synapse", "version": "1.163"}}).encode(),
)
OK_KEYS = PathAnswer(ob.KEYS_PATH, 200, json.dumps({"server_name": REMOTE}).encode())
HOST = HostLookup("remote.example", 8448, ("203.0.113.5",))


def probe(*answers: PathAnswer, **kw: Any) -> OutboundProbe:
    kw.setdefault("hosts", (HOST,))
    return OutboundProbe(
        server_name=kw.pop("server_name", REMOTE), answers=answers, **kw
    )


def refused_answer(path: str = ob.VERSION_PATH) -> PathAnswer:
    return answer_from_error(path, ConnectionRefusedError("Connection refused"))


def dns_answer() -> PathAnswer:
    return answer_from_error(
        ob.VERSION_PATH, DNSLookupError("no results for hostname lookup")
    )


def reason_of(p: OutboundProbe) -> tuple[str, dict[str, Any], str]:
    check = judge_outbound_reach([(p, 0)], source="outbound_probe_servers")
    assert check.status.value == "fail", check
    return check.details["reason"], dict(check.details), check.fix or ""


# -- config ---------------------------------------------------------------------------


def test_outbound_probe_servers_default_is_null_and_lists_validate() -> None:
    assert parse_fedhealth_config({}).outbound_probe_servers is None
    assert (
        parse_fedhealth_config({"outbound_probe_servers": []}).outbound_probe_servers
        == ()
    )
    config = parse_fedhealth_config(
        {"outbound_probe_servers": ["matrix.org", "example.net:8448", "matrix.org"]}
    )
    assert config.outbound_probe_servers == ("matrix.org", "example.net:8448")


@pytest.mark.parametrize(
    "value",
    ["matrix.org", ["bad name!"], [42], ["a.example"] * 17, ["example.org:99999"]],
)
def test_bad_outbound_probe_servers_name_the_key(value: object) -> None:
    with pytest.raises(FedHealthConfigError) as e:
        parse_fedhealth_config({"outbound_probe_servers": value})
    assert e.value.key == "outbound_probe_servers"
    with pytest.raises(ConfigError) as synapse_error:
        FedHealthModule.parse_config({"outbound_probe_servers": value})
    assert "outbound_probe_servers" in str(synapse_error.value.path)


def test_probe_servers_default_to_the_trusted_key_servers() -> None:
    assert probe_servers_for(None, ["matrix.org", "me.example"], "me.example") == (
        ("matrix.org",),
        "trusted_key_servers",
    )
    assert probe_servers_for((), ["matrix.org"], "me.example") == (
        (),
        "outbound_probe_servers",
    )


# -- config.signing_key: the banned key --------------------------------------------

BANNED_PADDED = "l/O9hxMVKB6Lg+3Hqf0FQQZhVESQcMzbPN1Cz2nM3og="


def snapshot_with_key(verify_key_base64: str) -> HomeserverSnapshot:
    return HomeserverSnapshot(
        server_name="me.example",
        public_baseurl=None,
        listeners=(),
        signing_keys=(
            SigningKeyInfo(key_id="ed25519:a_bad", verify_key_base64=verify_key_base64),
        ),
    )


# Synapse's list is new in 1.147.1; the floor we support is older.
SYNAPSE_HAS_THE_LIST = bool(banned_signing_keys())
needs_synapse_list = pytest.mark.skipif(
    not SYNAPSE_HAS_THE_LIST,
    reason="this Synapse has no BANNED_SERVER_SIGNING_KEYS (before 1.147.1)",
)


@needs_synapse_list
def test_synapse_list_is_padded_and_our_key_is_unpadded() -> None:
    # The encoding mismatch that makes Synapse 1.163.2's own comparison miss.
    assert BANNED_PADDED in banned_signing_keys()


@pytest.mark.skipif(SYNAPSE_HAS_THE_LIST, reason="this Synapse has the list")
def test_a_synapse_without_the_list_bans_no_key() -> None:
    try:
        from synapse.crypto import keyring
    except ImportError:  # pragma: no cover - every supported Synapse has it
        pytest.fail("synapse.crypto.keyring is missing")
    assert not hasattr(keyring, "BANNED_SERVER_SIGNING_KEYS")
    results = check_signing_key(snapshot_with_key(BANNED_PADDED.rstrip("=")))
    assert [r.status.value for r in results] == ["ok"], results


def test_the_banned_key_fails_whatever_the_padding() -> None:
    unpadded = BANNED_PADDED.rstrip("=")
    synapse_list = (None,) if SYNAPSE_HAS_THE_LIST else ()
    for listed in ((BANNED_PADDED,), (unpadded,), *synapse_list):
        results = check_signing_key(snapshot_with_key(unpadded), listed)
        banned = [r for r in results if r.details.get("reason") == "banned_key"]
        assert banned and banned[0].status.value == "fail", (listed, results)
        assert "Rotate the key" in (banned[0].fix or "")
        assert "old_signing_keys" in (banned[0].fix or "")


def test_another_key_is_not_banned() -> None:
    other = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik"
    results = check_signing_key(snapshot_with_key(other))
    assert [r.status.value for r in results] == ["ok"]


# -- outbound.reach: each reason -----------------------------------------------------


def test_reach_ok_names_the_version() -> None:
    check = judge_outbound_reach([(probe(OK_VERSION, OK_KEYS), 1500)], source="s")
    assert check.status.value == "ok", check
    assert check.details["servers"][0]["version"] == "Synapse 1.163"
    assert check.details["age_ms"] == 1500


def test_empty_list_skips() -> None:
    check = judge_outbound_reach([], source="outbound_probe_servers")
    assert check.status.value == "skip"
    assert "empty" in check.summary


def test_some_unreachable_warns_and_names_them() -> None:
    keys = PathAnswer(ob.KEYS_PATH, 200, b'{"server_name": "good.example"}')
    good = probe(OK_VERSION, keys, server_name="good.example")
    bad = probe(refused_answer(), server_name="bad.example")
    check = judge_outbound_reach([(good, 0), (bad, 0)], source="s")
    assert check.status.value == "warn"
    assert "bad.example" in check.summary and "1 of 2" in check.summary


def test_blocked_address_is_named_not_dns() -> None:
    blocked = HostLookup("remote.example", 8448, ("10.0.0.5",), ("10.0.0.5",))
    reason, details, fix = reason_of(probe(dns_answer(), hosts=(blocked,)))
    assert reason == "blocked_by_ip_range"
    assert details["servers"][0]["blocked_addresses"] == ["10.0.0.5"]
    assert "ip_range_whitelist" in fix


def test_blocked_ip_literal() -> None:
    answer = answer_from_error(ob.VERSION_PATH, Exception("403: IP address blocked"))
    assert reason_of(probe(answer))[0] == "blocked_by_ip_range"


def test_dead_proxy_is_named_not_refused() -> None:
    reason, details, fix = reason_of(
        probe(refused_answer(), proxy="http://127.0.0.1:3128")
    )
    assert reason == "proxy"
    assert details["servers"][0]["proxy"] == "http://127.0.0.1:3128"
    assert "https_proxy" in fix and "no_proxy_hosts" in fix


def test_name_that_does_not_resolve_is_dns() -> None:
    unresolved = HostLookup("remote.example", 8448, (), (), "no addresses")
    reason, _, fix = reason_of(probe(dns_answer(), hosts=(unresolved,)))
    assert reason == "dns"
    assert "dns_servers" in fix


def test_resolver_that_never_answers_is_dns_not_timeout() -> None:
    hung = HostLookup("remote.example", 8448, (), (), "TimeoutError")
    answer = PathAnswer(
        ob.VERSION_PATH, error_chain=("TimeoutError: x",), timed_out=True
    )
    assert reason_of(probe(answer, hosts=(hung,)))[0] == "dns"
    srv = PathAnswer(
        ob.VERSION_PATH,
        error_chain=(
            "SrvLookupTimeout: the SRV lookup did not finish",
            "CancelledError: ",
        ),
        timed_out=True,
    )
    assert reason_of(probe(srv))[0] == "dns"


def test_refused_and_timeout() -> None:
    assert reason_of(probe(refused_answer()))[0] == "refused"
    timed_out = PathAnswer(
        ob.VERSION_PATH, error_chain=("TimeoutError: ",), timed_out=True
    )
    assert reason_of(probe(timed_out))[0] == "timeout"


def _tls_failure(message: str) -> PathAnswer:
    from OpenSSL import SSL

    error = ResponseNeverReceived([Failure(SSL.Error([("SSL routines", "", message)]))])
    return answer_from_error(ob.VERSION_PATH, error)


def test_tls_version_and_certificate_reasons() -> None:
    reason, _, fix = reason_of(probe(_tls_failure("unsupported protocol")))
    assert reason == "tls_version" and "federation_client_minimum_tls_version" in fix
    reason, details, fix = reason_of(probe(_tls_failure("certificate verify failed")))
    assert reason == "certificate"
    assert details["certificate_reason"] == "untrusted_issuer"
    assert "federation_custom_ca_list" in fix
    reason, details, _ = reason_of(probe(_tls_failure("certificate has expired")))
    assert details["certificate_reason"] == "expired"


def test_certificate_rejected_on_the_well_known_is_the_cause() -> None:
    # Synapse drops the delegation silently, then :8448 is refused.
    wk = error_chain(
        ResponseNeverReceived(
            [Failure(Exception("[('SSL routines', '', 'certificate verify failed')]"))]
        )
    )
    check = judge_outbound_reach(
        [(probe(refused_answer(), well_known_error=wk), 0)], source="s"
    )
    assert check.details["reason"] == "certificate"
    assert check.details["certificate_reason"] == "untrusted_issuer"
    assert "ignores its well-known delegation" in check.summary
    # Without that well-known failure it stays a refusal.
    assert reason_of(probe(refused_answer()))[0] == "refused"


def test_http_status_and_wrong_server() -> None:
    assert reason_of(probe(PathAnswer(ob.VERSION_PATH, 404, b"")))[0] == "http_status"
    other = PathAnswer(ob.KEYS_PATH, 200, json.dumps({"server_name": "evil"}).encode())
    reason, _, fix = reason_of(probe(OK_VERSION, other))
    assert reason == "wrong_server"
    assert "evil" in fix


def test_error_chain_unwraps_twisted_wrappers() -> None:
    chain = error_chain(
        ResponseNeverReceived([Failure(ConnectionRefusedError("Connection refused"))])
    )
    assert chain[0].startswith("ResponseNeverReceived")
    assert any("ConnectionRefusedError" in c for c in chain[1:])


def test_the_startup_line_names_the_proxy() -> None:
    check = judge_outbound_reach(
        [(probe(refused_answer(), proxy="http://127.0.0.1:3128"), 0)], source="s"
    )
    line = problem_line(check)
    assert "\n" not in line
    assert line.startswith("outbound.reach: this server can't federate out (proxy)")
    assert "http://127.0.0.1:3128" in line and "; fix: " in line


# -- outbound.destinations -------------------------------------------------------------

NOW_MS = 1_764_288_000_000


def row(name: str, *, failing: bool, before: bool = True) -> DestinationRow:
    return DestinationRow(
        destination=name,
        retry_last_ts=NOW_MS - 1000 if failing else 0,
        retry_interval=600_000 if failing else 0,
        failure_ts=NOW_MS - 3_600_000 if failing else None,
        last_successful_stream_ordering=5 if before else None,
    )


def record(
    rows: Sequence[DestinationRow], total: int | None = None
) -> DestinationsRecord:
    failing = tuple(r for r in rows if r.failing)
    return DestinationsRecord(
        total=len(rows) if total is None else total,
        failing=failing,
        failing_total=len(failing),
        failing_succeeded_before=sum(r.succeeded_before for r in failing),
        shared_room_servers=4,
    )


def test_destinations_ok_when_none_in_backoff() -> None:
    check = judge_destinations(record([row("a.example", failing=False)]), now_ms=NOW_MS)
    assert check.status.value == "ok"
    assert "4 remote servers share rooms" in check.summary


def test_one_or_two_failing_destinations_warn_as_their_problem() -> None:
    rows = [row("a.example", failing=True), row("b.example", failing=True)]
    rows.append(row("c.example", failing=False))
    check = judge_destinations(record(rows), now_ms=NOW_MS)
    assert check.status.value == "warn"
    assert "a.example (failing for 60 min)" in check.summary
    assert "their own problem" in (check.fix or "")
    assert check.details["worst"][0]["failure_ts"] == NOW_MS - 3_600_000


def test_two_failing_never_fail_even_when_all() -> None:
    rows = [row("a.example", failing=True), row("b.example", failing=True)]
    assert judge_destinations(record(rows), now_ms=NOW_MS).status.value == "warn"


def test_three_that_worked_before_all_failing_fail() -> None:
    rows = [row(f"{n}.example", failing=True) for n in "abc"]
    check = judge_destinations(record(rows), now_ms=NOW_MS)
    assert check.status.value == "fail"
    assert "outbound.reach" in (check.fix or "")
    # With one still working it is their problem after all.
    rows.append(row("d.example", failing=False))
    assert judge_destinations(record(rows), now_ms=NOW_MS).status.value == "warn"


# -- federation.traffic ------------------------------------------------------------------


def test_traffic_skip_without_sources_or_traffic() -> None:
    assert (
        judge_traffic(TrafficRecord(), now_ms=NOW_MS, inbound_broken=False).status.value
        == "skip"
    )
    quiet = TrafficRecord(sources=("federation callbacks",))
    check = judge_traffic(quiet, now_ms=NOW_MS, inbound_broken=True)
    assert check.status.value == "skip" and "no federation traffic" in check.summary


def test_traffic_names_the_latest_and_the_source() -> None:
    traffic = TrafficRecord(
        received_from={
            "peer.example": NOW_MS - 5000,
            "old.example": NOW_MS - 9_000_000,
        },
        delivered_to={"peer.example": NOW_MS - 2000},
        sources=("federation callbacks", "Synapse's PDU metrics"),
    )
    check = judge_traffic(traffic, now_ms=NOW_MS, inbound_broken=False)
    assert check.status.value == "ok"
    assert "peer.example (5 s ago)" in check.summary
    assert "federation callbacks" in check.summary
    assert "contradicts_inbound_checks" not in check.details
    crossed = judge_traffic(traffic, now_ms=NOW_MS, inbound_broken=True)
    assert crossed.status.value == "ok"
    assert crossed.details["contradicts_inbound_checks"] is True
    assert "split-horizon" in crossed.summary


# -- client.support_well_known -----------------------------------------------------------

REQUEST = {"url": "https://me.example/.well-known/matrix/support"}


def support(status: int, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return judge_support_well_known(
        status, {}, raw, server_name="me.example", request=REQUEST
    )


def test_support_well_known() -> None:
    absent = support(404, b"")
    assert absent.status.value == "ok" and "no support well-known" in absent.summary
    valid = {"contacts": [{"matrix_id": "@admin:me.example", "role": "m.role.admin"}]}
    assert support(200, valid).status.value == "ok"
    assert (
        support(200, {"support_page": "https://me.example/help"}).status.value == "ok"
    )
    for invalid in (
        b"not json",
        {},
        {"contacts": [{"role": "m.role.admin"}]},
        {"contacts": [{"matrix_id": "admin", "role": "m.role.admin"}]},
        {"support_page": 3},
    ):
        check = support(200, invalid)
        assert check.status.value == "warn", (invalid, check)
        assert "support" in (check.fix or "")
    assert support(500, b"oops").status.value == "warn"
    error = judge_support_well_known_error(
        "timeout", "", server_name="me.example", request=REQUEST
    )
    assert error.status.value == "skip" and "timed out" in error.summary


# -- the once-a-minute rule and the families ------------------------------------------


class FakeClient:
    def __init__(self, result: OutboundProbe) -> None:
        self.result = result
        self.calls: list[str] = []

    async def probe(
        self, server_name: str, paths: Sequence[str], timeout_s: float
    ) -> OutboundProbe:
        self.calls.append(server_name)
        assert timeout_s > 0
        return attr_evolve(self.result, server_name=server_name)


def attr_evolve(p: OutboundProbe, **kw: Any) -> OutboundProbe:
    import attr

    return attr.evolve(p, **kw)


class FakeDestinations:
    async def read(self) -> DestinationsRecord:
        return record([row("down.example", failing=True)])


class FakeTraffic:
    def record(self) -> TrafficRecord:
        return TrafficRecord(
            received_from={"peer.example": NOW_MS - 1000},
            sources=("federation callbacks",),
        )


def env(client: FakeClient, clock: MemoryReactorClock) -> OutboundEnvironment:
    return OutboundEnvironment(
        client=client,
        destinations=FakeDestinations(),
        traffic=FakeTraffic(),
        probe_servers=(REMOTE,),
        source="outbound_probe_servers",
        answers=ThirdPartyAnswers(clock),
    )


def run(family: Any, clock: MemoryReactorClock) -> Any:
    d = defer.ensureDeferred(family.run(Deadline.after(clock, 10)))
    clock.advance(0)
    return d.result  # fakes finish at once


def test_third_parties_are_asked_at_most_once_a_minute() -> None:
    clock = MemoryReactorClock()
    clock.advance(NOW_MS / 1000)
    client = FakeClient(probe(OK_VERSION, OK_KEYS))
    family = OutboundFamily(env(client, clock))
    first = run(family, clock)
    clock.advance(30)
    second = run(family, clock)
    assert client.calls == [REMOTE]
    reach = [c for c in second.checks if c.id == "outbound.reach"][0]
    assert reach.details["age_ms"] == 30_000
    assert [c.status.value for c in first.checks] == ["ok", "warn"]
    clock.advance(31)
    run(family, clock)
    assert client.calls == [REMOTE, REMOTE]


def test_without_synapse_adapters_the_checks_skip() -> None:
    clock = MemoryReactorClock()
    outcome = run(OutboundFamily(None), clock)
    assert {c.id: c.status.value for c in outcome.checks} == {
        "outbound.reach": "skip",
        "outbound.destinations": "skip",
    }
    traffic = run(TrafficFamily(None, None), clock)
    assert traffic.checks[0].status.value == "skip"


def test_traffic_family_cross_checks_missing_inbound_findings() -> None:
    clock = MemoryReactorClock()
    clock.advance(NOW_MS / 1000)
    outcome = run(TrafficFamily(env(FakeClient(probe()), clock), None), clock)
    assert outcome.checks[0].details.get("contradicts_inbound_checks") is True


# -- verdict and metric --------------------------------------------------------------------


def _sample(server: str) -> float | None:
    value = REGISTRY.get_sample_value(
        "synapse_fedhealth_outbound_ok", {"server_name": server}
    )
    return None if value is None else float(value)


def _report(server: str, *checks: Any) -> Report:
    return Report.build(
        server_name=server,
        checks=list(checks),
        federation_disabled=False,
        generated_at=NOW_MS,
        duration_ms=10,
    )


def test_outbound_fail_is_broken_and_the_metric_follows() -> None:
    server = "outbound-metric.example"
    broken = _report(
        server, fail("outbound.reach", "x", fix="f"), ok("outbound.destinations", "y")
    )
    assert broken.verdict.value == "broken"
    record_report(broken)
    assert _sample(server) == 0
    record_report(
        _report(server, ok("outbound.reach", "x"), ok("outbound.destinations", "y"))
    )
    assert _sample(server) == 1
    # A report without outbound results removes the series.
    record_report(_report(server, ok("discovery.srv", "z")))
    assert _sample(server) is None


def test_synapse_pdu_gauges_are_read_per_server() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    from synapse_fedhealth.homeserver import _gauge_times

    registry = CollectorRegistry()
    gauge = Gauge(
        "synapse_federation_last_received_pdu_time",
        "as Synapse defines it",
        ["origin_server_name", "server_name"],
        registry=registry,
    )
    gauge.labels(origin_server_name="peer.example", server_name="me.example").set(
        1_764_288_000.5
    )
    gauge.labels(origin_server_name="x.example", server_name="other.example").set(5)
    assert _gauge_times(
        registry,
        "synapse_federation_last_received_pdu_time",
        "origin_server_name",
        "me.example",
    ) == {"peer.example": 1_764_288_000_500}
    assert (
        _gauge_times(registry, "synapse_federation_last_sent_pdu_time", "d", "me")
        is None
    )
