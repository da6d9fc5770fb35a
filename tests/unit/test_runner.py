from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.engine.deadline import REPORT_MARGIN_S, Deadline
from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.report import CheckResult, Report, Status, ok, warn
from synapse_fedhealth.runner import (
    CheckFamily,
    CheckRunner,
    FamilyOutcome,
    ReportCache,
)
from synapse_fedhealth.server_discovery import Resolution, Target


class HangingFamily:
    name = "network"
    check_ids: Sequence[str] = ("a.one", "a.two")

    def run(self, deadline: Deadline) -> defer.Deferred[FamilyOutcome]:
        return defer.Deferred()  # never fires


class ExplodingFamily:
    name = "exploding"
    check_ids: Sequence[str] = ("b.one",)

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        raise RuntimeError("boom")


class QuickFamily:
    name = "quick"
    check_ids: Sequence[str] = ("c.one",)

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        return FamilyOutcome(
            checks=(warn("c.one", "meh", fix="f"),),
            federation_tester={"Version": {"name": "Synapse"}},
        )


def _runner(
    reactor: MemoryReactorClock, families: Sequence[CheckFamily]
) -> CheckRunner:
    return CheckRunner(
        reactor=reactor,
        server_name="example.com",
        timeout_s=10,
        static_checks=lambda: [ok("config.x", "fine")],
        families=lambda: families,
    )


class CheckRunnerTests(SynchronousTestCase):
    def test_hanging_family_times_out_within_deadline(self) -> None:
        reactor = MemoryReactorClock()
        d = defer.ensureDeferred(
            _runner(reactor, [HangingFamily(), QuickFamily()]).run()
        )
        self.assertNoResult(d)
        reactor.advance(9.9)
        self.assertNoResult(d)
        reactor.advance(0.1)
        report = self.successResultOf(d)
        by_id = {c.id: c for c in report.checks}
        for check_id in ("a.one", "a.two"):
            self.assertEqual(by_id[check_id].status, Status.FAIL)
            self.assertEqual(by_id[check_id].details["reason"], "timeout")
            self.assertIn("timed out", by_id[check_id].summary)
        # The quick family's results survive the hanging one.
        self.assertEqual(by_id["c.one"].status, Status.WARN)
        self.assertEqual(report.verdict.value, "broken")
        self.assertEqual(report.federation_tester["Version"], {"name": "Synapse"})
        self.assertIs(report.federation_tester["FederationOK"], False)
        # `timeout` is the wall-clock budget of the whole run.
        self.assertEqual(report.duration_ms, 10_000)

    def test_exception_in_family_is_contained(self) -> None:
        reactor = MemoryReactorClock()
        d = defer.ensureDeferred(
            _runner(reactor, [ExplodingFamily(), QuickFamily()]).run()
        )
        report = self.successResultOf(d)
        by_id = {c.id: c for c in report.checks}
        self.assertEqual(by_id["b.one"].status, Status.FAIL)
        self.assertEqual(by_id["b.one"].details["reason"], "error")
        self.assertIn("boom", by_id["b.one"].summary)
        self.assertEqual(by_id["config.x"].status, Status.OK)

    def test_static_check_exception_is_contained(self) -> None:
        reactor = MemoryReactorClock()

        def broken() -> list[CheckResult]:
            raise ValueError("bad snapshot")

        runner = CheckRunner(
            reactor=reactor,
            server_name="x",
            timeout_s=1,
            static_checks=broken,
            families=list,
        )
        report = self.successResultOf(defer.ensureDeferred(runner.run()))
        self.assertEqual(report.checks[0].status, Status.FAIL)
        self.assertEqual(report.checks[0].details["reason"], "error")


class ReportCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pending: list[defer.Deferred[Report]] = []

        def start() -> defer.Deferred[Report]:
            d: defer.Deferred[Report] = defer.Deferred()
            self.pending.append(d)
            return d

        self.cache = ReportCache(self.reactor, 60, start)

    def _report(self, at: int) -> Report:
        return Report.build(
            server_name="x",
            checks=[],
            federation_disabled=False,
            generated_at=at,
            duration_ms=1,
        )

    def test_concurrent_refreshes_share_one_run(self) -> None:
        waiters = [self.cache.get(refresh=i % 2 == 0) for i in range(200)]
        self.assertEqual(self.cache.runs_started, 1)
        for w in waiters:
            self.assertNoResult(w)
        report = self._report(1)
        self.pending[0].callback(report)
        for w in waiters:
            self.assertIs(self.successResultOf(w), report)

    def test_serves_cache_within_ttl_and_refresh_forces_run(self) -> None:
        first = self.cache.get()
        self.pending[0].callback(self._report(1))
        self.successResultOf(first)
        self.reactor.advance(30)
        self.assertEqual(self.successResultOf(self.cache.get()).generated_at, 1)
        self.assertEqual(self.cache.runs_started, 1)
        forced = self.cache.get(refresh=True)
        self.assertEqual(self.cache.runs_started, 2)
        self.pending[1].callback(self._report(2))
        self.assertEqual(self.successResultOf(forced).generated_at, 2)
        self.reactor.advance(61)
        self.cache.get()
        self.assertEqual(self.cache.runs_started, 3)

    def test_listeners_see_each_new_report_and_errors_reach_waiters(self) -> None:
        seen: list[Report] = []
        self.cache.add_listener(seen.append)
        w = self.cache.get()
        self.pending[0].callback(self._report(5))
        self.assertEqual([r.generated_at for r in seen], [5])
        self.successResultOf(w)
        w2 = self.cache.get(refresh=True)
        self.pending[1].errback(RuntimeError("x"))
        self.failureResultOf(w2, RuntimeError)
        # A failed run does not poison the cache: the old report stays.
        self.assertEqual(self.cache.last_report, seen[0])


class FamiliesFactoryTests(SynchronousTestCase):
    def test_failing_family_factory_is_contained(self) -> None:
        def broken() -> list[CheckFamily]:
            raise ImportError("no engine")

        runner = CheckRunner(
            reactor=MemoryReactorClock(),
            server_name="x",
            timeout_s=1,
            static_checks=lambda: [ok("config.x", "fine")],
            families=broken,
        )
        report = self.successResultOf(defer.ensureDeferred(runner.run()))
        self.assertEqual([c.id for c in report.checks], ["config.x", "network"])
        self.assertEqual(report.checks[1].details["reason"], "error")


class FollowUpFamily:
    name = "follow"
    check_ids: Sequence[str] = ("d.one",)

    def __init__(self, seen: object) -> None:
        self.seen = seen
        self.deadline: Deadline | None = None

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        self.deadline = deadline
        return FamilyOutcome(checks=(ok("d.one", f"saw {self.seen}"),))


TARGET = Target(
    ip="203.0.113.7",
    port=8448,
    host_header="x",
    sni="x",
    hostname="x",
    source="test",
)


class FindingsFamily:
    name = "network"
    check_ids: Sequence[str] = ("e.one",)

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.deadline: Deadline | None = None

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        self.deadline = deadline
        d: defer.Deferred[None] = defer.Deferred()
        self.reactor.callLater(4, d.callback, None)
        await d
        findings = NetworkFindings(
            resolution=Resolution(server_name="x", targets=(TARGET,)),
            checks=(),
            federation_tester={},
            served_keys={},
            cert_expiry={"x": 123.0},
        )
        return FamilyOutcome(checks=(ok("e.one", "x"),), network=findings)


class FollowUpTests(SynchronousTestCase):
    def test_follow_ups_get_findings_and_the_same_deadline(self) -> None:
        reactor = MemoryReactorClock()
        first = FindingsFamily(reactor)
        follow = FollowUpFamily(None)

        def follow_ups(network: NetworkFindings | None) -> list[CheckFamily]:
            assert network is not None
            follow.seen = [t.address for t in network.targets]
            return [follow, HangingFamily()]

        runner = CheckRunner(
            reactor=reactor,
            server_name="x",
            timeout_s=10,
            static_checks=list,
            families=lambda: [first],
            follow_ups=follow_ups,
        )
        d = defer.ensureDeferred(runner.run())
        reactor.advance(4)
        # One deadline for the whole run, handed to every family as it is.
        assert first.deadline is not None
        self.assertIs(follow.deadline, first.deadline)
        self.assertEqual(first.deadline.at, 10 - REPORT_MARGIN_S)
        self.assertNoResult(d)
        # The hanging follow-up is cut at the end of the one budget.
        reactor.advance(6)
        report = self.successResultOf(d)
        by_id = {c.id: c for c in report.checks}
        self.assertEqual(by_id["d.one"].summary, "saw ['203.0.113.7:8448']")
        self.assertEqual(by_id["a.one"].details["reason"], "timeout")
        self.assertEqual(report.duration_ms, 10_000)
        # The engine's certificate expiry reaches the report for the metrics.
        self.assertEqual(report.facts.cert_expiry, {"x": 123.0})
