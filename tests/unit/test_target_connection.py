"""How `TargetProber` uses a target's connection: every target at once, the
handshake first, then the version and keys requests one after the other on
it, with the keys going their own way when the version hangs; the
connection stays open for the run's later checks until `close_all`."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.checks.federation import KEYS_PATH, VERSION_PATH
from synapse_fedhealth.engine.deadline import KEYS_WAIT_SHARE, Deadline
from synapse_fedhealth.engine.probes import (
    TargetConnections,
    TargetProbe,
    TargetProber,
)
from synapse_fedhealth.net.results import (
    ConnectOutcome,
    HandshakeOutcome,
    HttpResult,
    ProbeError,
    TlsProbeResult,
)
from synapse_fedhealth.server_discovery import Target
from tests.unit.fakes import FakeHttp, FakeTls


def _target(i: int) -> Target:
    return Target(
        ip=f"192.0.2.{i}",
        port=8448,
        host_header="example.test",
        sni="example.test",
        hostname="fed.example.test",
        source="test",
    )


class RecordingConnection:
    """A target connection whose every answer the test gives by hand."""

    def __init__(self, target: Target, log: list[tuple[str, str]]) -> None:
        self.target = target
        self.log = log
        self.handshaking: defer.Deferred[TlsProbeResult] = defer.Deferred()
        self.requests: dict[str, defer.Deferred[HttpResult]] = {}
        self.closed = False

    def handshake(self, timeout: float) -> defer.Deferred[TlsProbeResult]:
        self.log.append((self.target.ip, "handshake"))
        return self.handshaking

    def get(
        self, url: str, *, host_header: str, timeout: float, **kw: Any
    ) -> defer.Deferred[HttpResult]:
        path = urllib.parse.urlsplit(url).path
        self.log.append((self.target.ip, path))
        self.requests[path] = defer.Deferred()
        return self.requests[path]

    def close(self) -> None:
        self.closed = True

    def finish_handshake(self) -> None:
        t = self.target
        self.handshaking.callback(
            TlsProbeResult(
                ip=t.ip,
                port=t.port,
                sni=t.sni,
                connect=ConnectOutcome.OK,
                handshake=HandshakeOutcome.OK,
            )
        )

    def answer(self, path: str) -> None:
        self.requests[path].callback(
            HttpResult(url=path, host_header="example.test", sni="", status=200)
        )


class TargetProberConnectionTest(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log: list[tuple[str, str]] = []
        self.connections: dict[str, RecordingConnection] = {}
        self.targets = [_target(i) for i in range(1, 5)]
        self.run_connections = TargetConnections(self.connect)

    def connect(self, target: Target) -> Any:
        connection = RecordingConnection(target, self.log)
        self.connections[target.ip] = connection
        return connection

    def probe(self, timeout: float = 8.0) -> defer.Deferred[Mapping[str, TargetProbe]]:
        prober = TargetProber(
            FakeHttp({}), FakeTls({}), connections=self.run_connections
        )
        return defer.ensureDeferred(
            prober.probe_targets(self.targets, Deadline.after(self.reactor, timeout))
        )

    def test_every_target_handshakes_at_once(self) -> None:
        self.probe()
        # No handshake has finished, and every target's has started.
        assert self.log == [(t.ip, "handshake") for t in self.targets]

    def test_requests_follow_the_handshake_one_at_a_time(self) -> None:
        done = self.probe()
        first = self.connections["192.0.2.1"]
        first.finish_handshake()
        assert self.log[-1] == ("192.0.2.1", VERSION_PATH)
        assert KEYS_PATH not in first.requests  # it waits for the connection
        first.answer(VERSION_PATH)
        assert self.log[-1] == ("192.0.2.1", KEYS_PATH)
        first.answer(KEYS_PATH)
        assert not first.closed  # the run's, for the checks that follow
        for connection in list(self.connections.values())[1:]:
            connection.finish_handshake()
            connection.answer(VERSION_PATH)
            connection.answer(KEYS_PATH)
        probes = self.successResultOf(done)
        assert all(
            p.version is not None and p.version.status == 200 for p in probes.values()
        )
        assert all(p.keys is not None and p.keys.status == 200 for p in probes.values())
        assert not any(c.closed for c in self.connections.values())
        self.run_connections.close_all()
        assert all(c.closed for c in self.connections.values())
        # The keys' wait for the connection left no timer behind.
        pending: list[Any] = list(self.reactor.getDelayedCalls())
        assert not [c for c in pending if c.active()]

    def test_a_hanging_version_does_not_cost_the_keys(self) -> None:
        self.targets = self.targets[:1]
        done = self.probe(timeout=8.0)
        connection = self.connections["192.0.2.1"]
        connection.finish_handshake()
        self.reactor.advance(8.0 * KEYS_WAIT_SHARE - 0.1)
        assert KEYS_PATH not in connection.requests
        self.reactor.advance(0.2)
        assert KEYS_PATH in connection.requests
        connection.answer(KEYS_PATH)
        self.reactor.advance(8.0)  # the version never answers
        probe = self.successResultOf(done)["192.0.2.1:8448"]
        assert probe.keys is not None and probe.keys.status == 200
        assert probe.version is not None and probe.version.error is ProbeError.TIMEOUT
        assert not connection.closed
        self.run_connections.close_all()
        assert connection.closed

    def test_one_connection_per_target_address_for_the_run(self) -> None:
        self.targets = self.targets[:2]
        self.probe()
        first = self.run_connections.for_target(self.targets[0])
        assert first is self.connections["192.0.2.1"]
        # Asked again (a later check), it is the same connection.
        assert self.run_connections.for_target(_target(1)) is first
        assert len(self.connections) == 2
        self.run_connections.close_all()
        assert all(c.closed for c in self.connections.values())
        # Asked for after the run ended, a connection is closed at once.
        late = self.run_connections.for_target(_target(9))
        assert isinstance(late, RecordingConnection) and late.closed
