"""Engine fixes found by the end-to-end scenarios (tests/integration/test_scenarios.py),
pinned down without the network."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.net.results import ConnectOutcome
from synapse_fedhealth.net.tls import TwistedTlsProber, classify_connect_error
from synapse_fedhealth.report import Status
from synapse_fedhealth.settings import RunSettings
from tests.unit.engine_helpers import check_network, fake_io
from tests.unit.fakes import VERSION, FakeHttp, FakeResolver, FakeTls

KEYS_PATH = "/_matrix/key/v2/server"
VERSION_PATH = "/_matrix/federation/v1/version"


class FilteredPortTest(SynchronousTestCase):
    """A filtered port: the connect never completes and is cancelled by the
    probe's timeout. Twisted fails it with ConnectingCancelledError, which is
    not a CancelledError: it was reported as reason `error` with the address
    as its message ("IPv4Address(type='TCP', ...)")."""

    def test_cancelled_connect_is_a_timeout(self) -> None:
        e = error.ConnectingCancelledError(IPv4Address("TCP", "10.0.0.1", 8448))
        assert classify_connect_error(e) == ConnectOutcome.TIMEOUT

    def test_probe_of_a_hanging_connect_times_out(self) -> None:
        reactor = MemoryReactorClock()
        d = TwistedTlsProber(reactor).probe("10.0.0.1", 8448, "example.com", 2.0)
        self.assertNoResult(d)
        reactor.advance(2.1)
        result = self.successResultOf(d)
        assert result.connect == ConnectOutcome.TIMEOUT
        assert "timed out" in result.connect_error
        assert "IPv4Address" not in result.connect_error


class DeadAddressNextToWorkingOneTest(SynchronousTestCase):
    """A dead AAAA next to a working A: connection.reachable warns, and the
    requests to the dead address are skipped, not failed (the verdict is
    degraded, as a peer still federates through the A record)."""

    def run_checker(
        self, http: dict[tuple[str, str], Any], tls: dict[str, Any]
    ) -> NetworkFindings:
        reactor = MemoryReactorClock()
        io = fake_io(
            reactor,
            resolver=FakeResolver(
                {
                    ("example.com", "A"): ["203.0.113.1"],
                    ("matrix.example.com", "A"): ["203.0.113.7"],
                    ("matrix.example.com", "AAAA"): ["2001:db8::7"],
                }
            ),
            http=FakeHttp(
                {
                    ("/.well-known/matrix/server", "203.0.113.1"): (
                        200,
                        {"m.server": "matrix.example.com:443"},
                    ),
                    **http,
                }
            ),
            tls=FakeTls(tls),
        )
        settings = RunSettings(
            server_name="example.com", timeout_s=10, cert_expiry_warning_days=14
        )
        return self.successResultOf(check_network(reactor, settings, io))

    @staticmethod
    def by_target(findings: NetworkFindings, check_id: str) -> dict[str, Status]:
        return {str(c.target): c.status for c in findings.checks if c.id == check_id}

    def test_dead_aaaa_is_skipped(self) -> None:
        findings = self.run_checker(
            {(VERSION_PATH, "203.0.113.7"): VERSION},  # the IPv6 address: refused
            {"203.0.113.7": "ok", "2001:db8::7": ConnectOutcome.REFUSED},
        )
        reachable = self.by_target(findings, "connection.reachable")
        assert reachable == {
            "203.0.113.7:443": Status.OK,
            "[2001:db8::7]:443": Status.WARN,
        }
        for check_id in ("federation.version", "federation.keys"):
            assert self.by_target(findings, check_id)["[2001:db8::7]:443"] is (
                Status.SKIP
            )
        assert self.by_target(findings, "federation.version")["203.0.113.7:443"] is (
            Status.OK
        )

    def test_no_address_reachable_still_fails(self) -> None:
        findings = self.run_checker(
            {},
            {
                "203.0.113.7": ConnectOutcome.REFUSED,
                "2001:db8::7": ConnectOutcome.REFUSED,
            },
        )
        assert set(self.by_target(findings, "connection.reachable").values()) == {
            Status.FAIL
        }
        assert set(self.by_target(findings, "federation.version").values()) == {
            Status.FAIL
        }
