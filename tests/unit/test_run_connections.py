"""The run's connections to its targets end with the run: whichever way it
ends (finished, cut at its deadline, broken, cancelled), the runner closes
every one of them, also those a family still holds when it is cut."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.probes import TargetConnections
from synapse_fedhealth.net.results import HttpResult, TlsProbeResult
from synapse_fedhealth.report import Report
from synapse_fedhealth.runner import CheckFamily, CheckRunner, FamilyOutcome
from synapse_fedhealth.server_discovery import Target


def _target(i: int) -> Target:
    return Target(
        ip=f"192.0.2.{i}",
        port=8448,
        host_header="example.test",
        sni="example.test",
        hostname="fed.example.test",
        source="test",
    )


class OpenConnection:
    """A connection that stays open (its requests never answer) until
    closed."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.closed = False

    def handshake(self, timeout: float) -> defer.Deferred[TlsProbeResult]:
        return defer.Deferred()

    def get(self, url: str, **kw: Any) -> defer.Deferred[HttpResult]:
        return defer.Deferred()

    def close(self) -> None:
        self.closed = True


class UsesTargets:
    """A family that takes the connections of `targets`, then does what
    `end` says: "finish", "hang" or "raise"."""

    name = "uses targets"
    check_ids: Sequence[str] = ("t.one",)

    def __init__(
        self, connections: TargetConnections, targets: Sequence[Target], end: str
    ) -> None:
        self._connections = connections
        self._targets = targets
        self._end = end

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        for target in self._targets:
            self._connections.for_target(target)
        if self._end == "hang":
            await defer.Deferred()
        if self._end == "raise":
            raise RuntimeError("boom")
        return FamilyOutcome(checks=())


class RunConnectionsTest(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.made: list[OpenConnection] = []

        def connect(target: Target) -> OpenConnection:
            connection = OpenConnection(target)
            self.made.append(connection)
            return connection

        self.connections = TargetConnections(connect)

    def start_run(self, first: str, follow_up: str) -> defer.Deferred[Report]:
        connections = self.connections

        def follow_ups(network: Any) -> list[CheckFamily]:
            # The follow-up asks for the first family's targets again, and
            # one more.
            return [UsesTargets(connections, [_target(1), _target(3)], follow_up)]

        runner = CheckRunner(
            reactor=self.reactor,
            server_name="example.com",
            timeout_s=10,
            static_checks=list,
            families=lambda: [
                UsesTargets(connections, [_target(1), _target(2)], first)
            ],
            follow_ups=follow_ups,
            connections=connections,
        )
        return defer.ensureDeferred(runner.run())

    def assert_all_closed(self) -> None:
        # One per address: the follow-up's first target is the first family's.
        assert [c.target.ip for c in self.made] == [
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
        ]
        assert all(c.closed for c in self.made)

    def test_a_finished_run_closes_every_connection(self) -> None:
        done = self.start_run("finish", "finish")
        self.successResultOf(done)
        self.assert_all_closed()

    def test_connections_stay_open_while_the_run_goes_on(self) -> None:
        done = self.start_run("finish", "hang")
        self.reactor.advance(5)
        assert not done.called
        assert len(self.made) == 3 and not any(c.closed for c in self.made)

    def test_a_run_cut_at_its_deadline_closes_every_connection(self) -> None:
        done = self.start_run("finish", "hang")
        self.reactor.advance(10)
        report = self.successResultOf(done)
        assert report.checks[0].details["reason"] == "timeout"
        self.assert_all_closed()

    def test_a_broken_family_does_not_leave_connections_open(self) -> None:
        done = self.start_run("finish", "raise")
        self.successResultOf(done)
        self.assert_all_closed()

    def test_a_cancelled_run_closes_every_connection(self) -> None:
        done = self.start_run("finish", "hang")
        self.reactor.advance(1)
        done.cancel()
        # The cut family is reported as failed; the run still ends now.
        report = self.successResultOf(done)
        assert report.checks[0].details["reason"] == "error"
        self.assert_all_closed()
