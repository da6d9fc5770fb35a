"""One report for a worker deployment, shared through the database: two
services (a checking process and a worker) on one real SQLite database, a
fake clock, and the real SQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.config import parse_fedhealth_config
from synapse_fedhealth.deployment import DeploymentStore, SharedReports
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.homeserver import HomeserverSnapshot, ListenerInfo
from synapse_fedhealth.report import Report, Status, ok
from synapse_fedhealth.runner import CheckFamily, FamilyOutcome
from synapse_fedhealth.service import FedHealthService
from tests.unit.engine_helpers import fake_io


class CountingFamily:
    name = "network"
    check_ids: Sequence[str] = ("connection.reachable",)

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        self.runs += 1
        return FamilyOutcome(
            checks=(ok("connection.reachable", f"run {self.runs}"),),
            federation_tester={"Version": {}},
        )


class Families:
    def __init__(self, family: CheckFamily) -> None:
        self.family = family

    def first(self, io: Any, settings: Any) -> list[CheckFamily]:
        return [self.family]

    def follow_ups(self, io: Any, settings: Any, network: Any) -> list[CheckFamily]:
        return []


def run_db_on(conn: sqlite3.Connection) -> Callable[..., defer.Deferred[Any]]:
    """`ModuleApi.run_db_interaction` on one SQLite connection."""

    def run_db(desc: str, func: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        cursor = conn.cursor()
        try:
            result = func(cursor, *args)
            conn.commit()
        except Exception:
            conn.rollback()
            return defer.fail()
        return defer.succeed(result)

    return run_db


def snapshot(resources: frozenset[str]) -> HomeserverSnapshot:
    return HomeserverSnapshot(
        server_name="example.com",
        public_baseurl="https://matrix.example.com/",
        listeners=(
            ListenerInfo(
                index=0,
                type="http",
                port=8008,
                bind_addresses=("127.0.0.1",),
                resources=resources,
                x_forwarded=True,
            ),
        ),
    )


class DeploymentTest(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1.7e9)
        self.conn = sqlite3.connect(":memory:")
        self.family = CountingFamily()
        self.checker = self._process(
            "master", frozenset({"client", "federation"}), checks=True
        )
        # A worker whose listener lacks `federation`: its config problem must
        # reach the report every process serves.
        self.worker = self._process("worker1", frozenset({"client"}), checks=False)

    def _process(
        self, instance: str, resources: frozenset[str], *, checks: bool
    ) -> SharedReports:
        service = FedHealthService(
            config=parse_fedhealth_config({"timeout": "5s"}),
            server_name="example.com",
            snapshot=snapshot(resources),
            clock=self.clock,
            run_io=lambda settings: fake_io(
                self.clock, resolver=None, http=None, tls=None
            ),
            families=Families(self.family) if checks else Families(CountingFamily()),
            runs_network=checks,
            user_agent="Synapse/test",
        )

        def spawn(func: Callable[[], Awaitable[None]]) -> None:
            defer.ensureDeferred(func())  # type: ignore[arg-type]

        async def sleep(seconds: float) -> None:
            await task.deferLater(self.clock, seconds, lambda: None)  # type: ignore[arg-type]

        async def wait(d: defer.Deferred[Any]) -> Any:
            return await d

        return SharedReports(
            service,
            DeploymentStore(run_db_on(self.conn)),
            instance=instance,
            clock=self.clock,
            wait=wait,
            sleep=sleep,
            spawn=spawn,
        )

    def report(self, process: SharedReports, refresh: bool = False) -> Report:
        return self.successResultOf(defer.ensureDeferred(process.report(refresh)))

    def test_every_process_serves_the_checkers_run_and_every_config(self) -> None:
        self.successResultOf(defer.ensureDeferred(self.worker.publish_config()))
        on_checker = self.report(self.checker, refresh=True)
        on_worker = self.report(self.worker)
        assert on_worker.generated_at == on_checker.generated_at
        for report in (on_checker, on_worker):
            network = [c for c in report.checks if c.id == "connection.reachable"]
            assert [c.summary for c in network] == ["run 1"]
            listener = {
                c.details["instance"]: c.status
                for c in report.checks
                if c.id == "config.federation_listener"
            }
            assert listener == {"master": Status.OK, "worker1": Status.FAIL}
            assert report.verdict.value == "broken"
            assert report.federation_tester["FederationOK"] is False
        assert self.family.runs == 1

    def test_refresh_on_a_worker_runs_once_on_the_checker(self) -> None:
        self.report(self.checker, refresh=True)
        self.clock.advance(10)
        waiting = defer.ensureDeferred(self.worker.report(refresh=True))
        self.assertNoResult(waiting)
        # The checker sees the request at its next poll; two polls run once.
        self.successResultOf(defer.ensureDeferred(self.checker.poll_refresh_requests()))
        self.successResultOf(defer.ensureDeferred(self.checker.poll_refresh_requests()))
        self.clock.advance(0.25)
        report = self.successResultOf(waiting)
        assert self.family.runs == 2
        network = [c for c in report.checks if c.id == "connection.reachable"]
        assert [c.summary for c in network] == ["run 2"]
        assert any("from master, 0 s old" in n for n in report.notes)

    def test_a_refresh_nobody_answers_ends_and_says_so(self) -> None:
        self.report(self.checker, refresh=True)
        self.clock.advance(60)
        waiting = defer.ensureDeferred(self.worker.report(refresh=True))
        for _ in range(40):  # 10 s of polling, past timeout + grace
            self.clock.advance(0.25)
        report = self.successResultOf(waiting)
        assert self.family.runs == 1
        (note,) = report.notes
        assert "68 s old" in note and "within 8 s: is master running?" in note

    def test_no_checker_report_yet(self) -> None:
        report = self.report(self.worker)
        network = [c for c in report.checks if c.id == "connection.reachable"]
        assert network[0].status is Status.SKIP
        assert "published no report yet" in network[0].summary
        instances = {
            c.details.get("instance")
            for c in report.checks
            if c.id.startswith("config.")
        }
        assert instances == {"worker1"}

    def _config_row_time(self, instance: str) -> int:
        rows = self.successResultOf(
            defer.ensureDeferred(DeploymentStore(run_db_on(self.conn)).rows())
        )
        (row,) = [r for r in rows if r.instance == instance]
        return row.updated_at

    def test_requests_between_runs_get_the_same_report_object(self) -> None:
        self.report(self.checker, refresh=True)
        on_checker = self.report(self.checker)
        assert self.report(self.checker) is on_checker
        on_worker = self.report(self.worker)
        # Same checker row, same config rows, same age: the same object, so
        # the endpoint serves the bytes it encoded for it.
        assert self.report(self.worker) is on_worker
        self.clock.advance(1)
        older = self.report(self.worker)
        assert older is not on_worker
        assert any("1 s old" in n for n in older.notes)

    def test_a_new_run_reaches_the_worker(self) -> None:
        self.report(self.checker, refresh=True)
        first = self.report(self.worker)
        self.clock.advance(5)
        self.report(self.checker, refresh=True)
        second = self.report(self.worker)
        summaries = [c.summary for c in second.checks if c.id == "connection.reachable"]
        assert summaries == ["run 2"]
        assert second.generated_at > first.generated_at

    def test_a_request_rewrites_the_config_row_only_when_it_changed(self) -> None:
        self.report(self.checker, refresh=True)
        self.report(self.worker)
        written = self._config_row_time("worker1")
        self.clock.advance(30)
        self.report(self.worker)
        self.report(self.worker)
        assert self._config_row_time("worker1") == written
        # The checker's own run still publishes its config row every time.
        before = self._config_row_time("master")
        self.report(self.checker, refresh=True)
        assert self._config_row_time("master") > before
