"""Runs every check family under one deadline, and caches the report.

Pure Twisted: nothing here imports Synapse, so the same runner serves the
module, the command line and the unit tests (with a fake reactor). The module
facade applies Synapse's logcontext rules around it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attr
from twisted.internet import defer
from twisted.python.failure import Failure

from synapse_fedhealth.engine.deadline import REPORT_MARGIN_S, Clock, Deadline
from synapse_fedhealth.engine.spawn import spawn
from synapse_fedhealth.report import CheckResult, Report, RunFacts, fail, skip

if TYPE_CHECKING:
    from synapse_fedhealth.engine.network_checker import NetworkFindings

logger = logging.getLogger("synapse_fedhealth")


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class FamilyOutcome:
    """What one family of checks found."""

    checks: tuple[CheckResult, ...]
    federation_tester: Mapping[str, Any] = attr.ib(factory=dict)
    # The network family's findings, for the follow-up families.
    network: NetworkFindings | None = None
    # The listener the public path reached (proxy.forwarded_headers).
    public_listener_index: int | None = None


class CheckFamily(Protocol):
    """A group of checks that runs as one unit (e.g. all network probes)."""

    name: str
    # The ids reported as timed out / errored if the family does not finish.
    check_ids: Sequence[str]

    def run(self, deadline: Deadline) -> Awaitable[FamilyOutcome]:
        """Finish by `deadline`, the run's one deadline."""


class RunConnections(Protocol):
    """What a run keeps open from one family to the next (the connections
    to its targets, `engine.probes.TargetConnections`)."""

    def close_all(self) -> None:
        """Drop every connection of the run, in use or not."""


# Follow-up families run after the first ones, with the network findings
# (None when the network family did not run or did not finish).
FollowUps = Callable[["NetworkFindings | None"], Sequence[CheckFamily]]

BUG_FIX = (
    "This is a bug in synapse-fedhealth; the other checks are unaffected. "
    "Please report it with this summary."
)


def internal_error(check_id: str, what: str, error: Exception) -> CheckResult:
    """A check that could not run because of a bug of ours: a `fail` with
    reason "error" for that id only (SPEC 5), never an exception."""
    return fail(
        check_id,
        f"{what}: {type(error).__name__}: {error}"[:300],
        fix=BUG_FIX,
        details={"reason": "error"},
    )


def _placeholder_results(
    family: CheckFamily, *, reason: str, summary: str, fix: str
) -> tuple[CheckResult, ...]:
    return tuple(
        fail(check_id, summary, fix=fix, details={"reason": reason})
        for check_id in family.check_ids
    )


async def _run_family_bounded(
    family: CheckFamily, deadline: Deadline, cut_at: Deadline, timeout_s: float
) -> FamilyOutcome:
    """Run a family until `cut_at` (the end of the run's budget); a timeout or
    an exception becomes `fail` results for the family's ids, never an
    exception."""
    d: defer.Deferred[FamilyOutcome] = spawn(_call(family, deadline))
    d.addTimeout(cut_at.remaining_s(), cut_at.clock)  # type: ignore[arg-type]
    try:
        return await d
    except defer.TimeoutError:
        return FamilyOutcome(
            checks=_placeholder_results(
                family,
                reason="timeout",
                summary=f"{family.name} checks timed out after {timeout_s:g} s",
                fix="Something on the path hangs; see the other checks and raise "
                "`timeout` only if the network is known to be slow.",
            )
        )
    except Exception:
        # One broken family must not take the report down with it. Log without
        # a traceback in Synapse's log; the details are in the report.
        failure = Failure()
        logger.warning(
            "synapse_fedhealth: %s checks raised %s: %s",
            family.name,
            failure.type.__name__ if failure.type else "error",
            failure.getErrorMessage(),
        )
        return FamilyOutcome(
            checks=_placeholder_results(
                family,
                reason="error",
                summary=f"{family.name} checks raised an internal error: "
                f"{failure.getErrorMessage()[:200]}",
                fix=BUG_FIX,
            )
        )


async def _call(family: CheckFamily, deadline: Deadline) -> FamilyOutcome:
    return await family.run(deadline)


class CheckRunner:
    """Produces one `Report` per `run()`.

    `static_checks` are cheap synchronous checks (config lint). `families` are
    asynchronous groups run concurrently under the one deadline; `follow_ups`
    run once those finished, with their findings, under the same deadline.
    `timeout_s` is the wall-clock budget of the whole run: the report is
    ready by then, whatever hangs. `connections` are the run's kept
    connections: closed when the run ends, however it ends (finished, cut
    at its deadline, cancelled or broken), so no socket outlives its run.
    """

    def __init__(
        self,
        *,
        reactor: Clock,
        server_name: str,
        timeout_s: float,
        static_checks: Callable[[], Sequence[CheckResult]],
        families: Callable[[], Sequence[CheckFamily]],
        federation_disabled: bool = False,
        notes: Sequence[str] = (),
        follow_ups: FollowUps | None = None,
        connections: RunConnections | None = None,
    ) -> None:
        self._reactor = reactor
        self._server_name = server_name
        self._timeout_s = timeout_s
        self._static_checks = static_checks
        self._families = families
        self._federation_disabled = federation_disabled
        self._notes = tuple(notes)
        self._follow_ups = follow_ups
        self._connections = connections

    async def run(self) -> Report:
        try:
            return await self._run()
        finally:
            if self._connections is not None:
                self._connections.close_all()

    async def _run(self) -> Report:
        started = self._reactor.seconds()
        budget = Deadline.after(self._reactor, self._timeout_s)
        # Families aim at this; what is left is for building the report.
        deadline = budget.earlier(REPORT_MARGIN_S)
        checks: list[CheckResult] = []
        try:
            checks.extend(self._static_checks())
        except Exception as e:
            checks.append(internal_error("config", "the config checks raised", e))
        try:
            families = list(self._families())
        except Exception as e:
            families = []
            checks.append(
                internal_error("network", "the network checks could not start", e)
            )
        outcomes = await self._run_all(families, deadline, budget)
        network = next((o.network for o in outcomes if o.network is not None), None)
        follow_ups: list[CheckFamily] = []
        if self._follow_ups is not None:
            try:
                follow_ups = list(self._follow_ups(network))
            except Exception as e:
                checks.append(
                    internal_error(
                        "follow_up", "the follow-up checks could not start", e
                    )
                )
        outcomes += await self._run_all(follow_ups, deadline, budget)
        federation_tester: dict[str, Any] = {}
        public_listener_index: int | None = None
        for outcome in outcomes:
            checks.extend(outcome.checks)
            federation_tester.update(outcome.federation_tester)
            if outcome.public_listener_index is not None:
                public_listener_index = outcome.public_listener_index
        finished = self._reactor.seconds()
        report = Report.build(
            server_name=self._server_name,
            checks=checks,
            federation_disabled=self._federation_disabled,
            generated_at=int(finished * 1000),
            duration_ms=int((finished - started) * 1000),
            notes=self._notes,
            federation_tester=federation_tester,
            facts=RunFacts(
                cert_expiry=dict(network.cert_expiry) if network else {},
                public_listener_index=public_listener_index,
            ),
        )
        if federation_tester or families:
            report = attr.evolve(
                report,
                federation_tester={
                    **report.federation_tester,
                    "FederationOK": report.federation_ok,
                },
            )
        return report

    async def _run_all(
        self, families: Sequence[CheckFamily], deadline: Deadline, budget: Deadline
    ) -> list[FamilyOutcome]:
        if not families:
            return []
        return list(
            await defer.gatherResults(
                [
                    spawn(
                        _run_family_bounded(family, deadline, budget, self._timeout_s)
                    )
                    for family in families
                ],
                consumeErrors=True,
            )
        )


def skipped_family_results(
    check_ids: Sequence[str], reason: str
) -> tuple[CheckResult, ...]:
    return tuple(skip(check_id, reason) for check_id in check_ids)


class ReportCache:
    """Serves the last report for `ttl_s`, and shares one run in flight.

    `start_run` starts a run and returns its Deferred (the module passes a
    function that starts it in the sentinel logcontext). Callers each get
    their own Deferred, so one caller cancelling does not cancel the others.
    """

    def __init__(
        self,
        reactor: Clock,
        ttl_s: float,
        start_run: Callable[[], defer.Deferred[Report]],
    ) -> None:
        self._reactor = reactor
        self._ttl_s = ttl_s
        self._start_run = start_run
        self._report: Report | None = None
        self._report_time = 0.0
        self._waiters: list[defer.Deferred[Report]] | None = None
        self.runs_started = 0
        self._listeners: list[Callable[[Report], None]] = []

    @property
    def last_report(self) -> Report | None:
        return self._report

    def add_listener(self, listener: Callable[[Report], None]) -> None:
        """Called with every new report (metrics, transition logging)."""
        self._listeners.append(listener)

    def get(self, *, refresh: bool = False) -> defer.Deferred[Report]:
        fresh = (
            self._report is not None
            and self._reactor.seconds() - self._report_time < self._ttl_s
        )
        if fresh and not refresh and self._waiters is None:
            assert self._report is not None
            return defer.succeed(self._report)
        waiter: defer.Deferred[Report] = defer.Deferred()
        if self._waiters is None:
            self._waiters = [waiter]
            self._begin()
        else:
            self._waiters.append(waiter)
        return waiter

    def _begin(self) -> None:
        self.runs_started += 1
        try:
            d = self._start_run()
        except Exception:
            d = defer.fail()
        d.addBoth(self._finished)

    def _finished(self, result: Report | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        if isinstance(result, Report):
            self._report = result
            self._report_time = self._reactor.seconds()
            for listener in self._listeners:
                try:
                    listener(result)
                except Exception as e:  # a listener must not break the callers
                    logger.warning("synapse_fedhealth: report listener failed: %s", e)
        for waiter in waiters:
            if isinstance(result, Report):
                waiter.callback(result)
            else:
                waiter.errback(result)


class SkippedFamily:
    """A family that did not run: its ids are reported as `skip` with why."""

    def __init__(self, name: str, check_ids: Sequence[str], reason: str) -> None:
        self.name = name
        self.check_ids: Sequence[str] = tuple(check_ids)
        self._reason = reason

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        return FamilyOutcome(
            checks=skipped_family_results(self.check_ids, self._reason)
        )
