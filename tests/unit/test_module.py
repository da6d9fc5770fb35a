"""The module facade, with a mocked ModuleApi and a fake reactor."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from unittest import mock

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from synapse_fedhealth import homeserver
from synapse_fedhealth.checks.forwarded import ECHO_PATH
from synapse_fedhealth.config import parse_fedhealth_config
from synapse_fedhealth.echo import EchoResource
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.homeserver import HomeserverSnapshot, ListenerInfo
from synapse_fedhealth.module import ENDPOINT_PATH, FedHealthModule
from synapse_fedhealth.net.dns import DnsLookupPool
from synapse_fedhealth.report import Report, Status
from synapse_fedhealth.resource import FedHealthResource
from synapse_fedhealth.runner import CheckFamily, FamilyOutcome
from synapse_fedhealth.service import FedHealthService
from synapse_fedhealth.wiring import import_run_modules


def _snapshot(**overrides: Any) -> HomeserverSnapshot:
    values: dict[str, Any] = {
        "server_name": "example.com",
        "public_baseurl": "https://matrix.example.com/",
        "listeners": (
            ListenerInfo(
                index=0,
                type="http",
                port=8008,
                bind_addresses=("127.0.0.1",),
                resources=frozenset({"client"}),
            ),
        ),
    }
    values.update(overrides)
    return HomeserverSnapshot(**values)


class FakeNetworkFamily:
    name = "network"
    check_ids: Sequence[str] = ("connection.reachable",)

    def __init__(self, public_listener_index: int | None = None) -> None:
        self.runs = 0
        self.public_listener_index = public_listener_index

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        from synapse_fedhealth.report import ok

        self.runs += 1
        return FamilyOutcome(
            checks=(ok("connection.reachable", "fine"),),
            public_listener_index=self.public_listener_index,
        )


class OneFamily:
    """A `FamilyFactory` with one first-phase family and no follow-ups."""

    def __init__(self, family: CheckFamily) -> None:
        self.family = family

    def first(self, io: Any, settings: Any) -> list[CheckFamily]:
        return [self.family]

    def follow_ups(self, io: Any, settings: Any, network: Any) -> list[CheckFamily]:
        return []


def _service(family: CheckFamily, **config: Any) -> FedHealthService:
    reactor = MemoryReactorClock()
    return FedHealthService(
        config=parse_fedhealth_config(config),
        server_name="example.com",
        snapshot=_snapshot(),
        clock=reactor,
        run_io=lambda settings: mock.Mock(),
        families=OneFamily(family),
        runs_network=True,
        user_agent="Synapse/test",
    )


def _mock_api() -> mock.Mock:
    """A ModuleApi whose background processes are Synapse's own."""
    from .synapse_releases import background_process_runner

    api = mock.Mock()
    api.server_name = "example.com"
    api.run_as_background_process.side_effect = background_process_runner("example.com")
    return api


def _module(
    monkeypatch: pytest.MonkeyPatch,
    *,
    background: bool = True,
    snapshot: HomeserverSnapshot | None = None,
    raw_config: dict[str, Any] | None = None,
) -> tuple[FedHealthModule, mock.Mock, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    monkeypatch.setattr(homeserver, "reactor_of", lambda api: reactor)
    monkeypatch.setattr(homeserver, "snapshot_of", lambda api: snapshot or _snapshot())
    monkeypatch.setattr(homeserver, "user_agent_of", lambda api: "Synapse/test")
    monkeypatch.setattr(homeserver, "may_have_workers", lambda api: False)
    api = _mock_api()
    api.should_run_background_tasks.return_value = background
    config = parse_fedhealth_config(
        raw_config or {"startup_delay": "2s", "interval": "1h"}
    )
    return FedHealthModule(config, api), api, reactor


def test_registers_endpoint_and_schedules_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    _, api, reactor = _module(monkeypatch)
    mounted = dict(call.args for call in api.register_web_resource.call_args_list)
    assert isinstance(mounted[ENDPOINT_PATH], FedHealthResource)
    assert isinstance(mounted[ECHO_PATH], EchoResource)
    delayed = {
        call.kwargs["desc"]: call.args
        for call in api.delayed_background_call.call_args_list
    }
    assert delayed["fedhealth_startup"][0] == 2000
    # The run's modules are imported in a thread halfway to the first run.
    assert delayed["fedhealth_preload"][0] == 1000
    assert api.looping_background_call.call_args.args[1] == 3_600_000
    # Construction runs inside Synapse's start-up: no connection and no
    # thread yet (the DNS pool is made by the first run and starts its
    # threads on the first lookup), and the pool is stopped at shutdown
    # without waiting for any lookup.
    assert (reactor.tcpClients, reactor.sslClients, reactor.unixClients) == ([], [], [])
    [(stop, _, _)] = reactor.triggers["during"]["shutdown"]
    pool = stop.__self__.threadpool
    assert isinstance(pool, DnsLookupPool)
    assert pool.threads_started == 0


def test_workers_without_background_tasks_do_not_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, api, _ = _module(monkeypatch, background=False)
    api.delayed_background_call.assert_not_called()
    api.looping_background_call.assert_not_called()
    report = _report_now(module)
    network = [c for c in report.checks if c.id == "connection.reachable"]
    assert network and all(c.status is Status.SKIP for c in network)
    assert "background tasks" in network[0].summary


def test_the_preload_imports_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    _, api, _ = _module(monkeypatch)
    preload = next(
        call.args[1]
        for call in api.delayed_background_call.call_args_list
        if call.kwargs["desc"] == "fedhealth_preload"
    )
    threaded: list[object] = []

    async def defer_to_thread(f: Any, *args: Any) -> None:
        threaded.append(f)

    api.defer_to_thread = defer_to_thread
    with pytest.raises(StopIteration):
        preload().send(None)
    assert threaded == [import_run_modules]


def test_startup_and_periodic_off(monkeypatch: pytest.MonkeyPatch) -> None:
    _, api, _ = _module(monkeypatch, raw_config={"startup_check": False, "interval": 0})
    api.delayed_background_call.assert_not_called()
    api.looping_background_call.assert_not_called()


def test_config_problems_logged_at_startup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="synapse_fedhealth")
    _module(monkeypatch)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # The listener serves no `federation`: a config.federation_listener problem.
    assert any(line.startswith("config.federation_listener") for line in lines)
    assert all("; fix: " in line for line in lines)


def test_disabled_federation_gives_disabled_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, _, _ = _module(
        monkeypatch, snapshot=_snapshot(federation_domain_whitelist=())
    )
    report = _report_now(module)
    assert report.verdict.value == "disabled"
    assert report.federation_ok is False


def test_unreadable_synapse_config_does_not_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(api: Any) -> HomeserverSnapshot:
        raise AttributeError("'Config' object has no attribute 'server'")

    reactor = MemoryReactorClock()
    monkeypatch.setattr(homeserver, "reactor_of", lambda api: reactor)
    monkeypatch.setattr(homeserver, "snapshot_of", broken)
    api = _mock_api()
    module = FedHealthModule(parse_fedhealth_config({}), api)
    report = _report_now(module)
    assert report.verdict.value == "broken"
    assert report.checks[0].details["reason"] == "error"


def test_report_runs_family_and_caches() -> None:
    family = FakeNetworkFamily()
    service = _service(family)
    first = _report_now(service)
    second = _report_now(service)
    assert first is second
    assert family.runs == 1
    third = _report_now(service, refresh=True)
    assert family.runs == 2
    assert third is not first


def _report_now(
    module: FedHealthModule | FedHealthService, refresh: bool = False
) -> Report:
    d: defer.Deferred[Report] = module.get_report(refresh)
    results: list[Report] = []
    d.addCallback(results.append)
    assert results, "the run should finish synchronously with fakes"
    return results[0]


def test_public_listener_seen_by_a_run_makes_x_forwarded_definite() -> None:
    # The run's echo request arrived on listener 0 (proxy.forwarded_headers).
    service = _service(FakeNetworkFamily(public_listener_index=0))
    before = [c for c in service.config_checks() if c.id == "config.x_forwarded"]
    assert before[0].summary.startswith("if a reverse proxy fronts")
    _report_now(service)
    after = [c for c in service.config_checks() if c.id == "config.x_forwarded"]
    assert after[0].details.get("definite") is True
    assert not after[0].summary.startswith("if a reverse proxy fronts")
