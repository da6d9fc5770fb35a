"""The orchestrator with fake DNS, HTTP and TLS, on a fake clock."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.net.results import ConnectOutcome, DnsOutcome, SrvRecord
from synapse_fedhealth.report import Status
from synapse_fedhealth.settings import RunSettings
from tests.unit.engine_helpers import check_network, fake_io
from tests.unit.fakes import BOOM, HANG, VERSION, FakeHttp, FakeResolver, FakeTls


class NetworkCheckerTest(SynchronousTestCase):
    def run_checker(
        self,
        server_name: str,
        dns: dict[tuple[str, str], Any],
        http: dict[tuple[str, str], Any],
        tls: dict[str, Any],
        *,
        timeout: float = 10,
        advance: float = 0,
    ) -> tuple[NetworkFindings, FakeResolver, FakeHttp, FakeTls]:
        reactor = MemoryReactorClock()
        resolver, fetcher, prober = FakeResolver(dns), FakeHttp(http), FakeTls(tls)
        settings = RunSettings(
            server_name=server_name, timeout_s=timeout, cert_expiry_warning_days=14
        )
        io = fake_io(reactor, resolver=resolver, http=fetcher, tls=prober)
        d = check_network(reactor, settings, io)
        if advance:
            for _ in range(int(advance * 10) + 2):
                reactor.advance(0.1)
        findings = self.successResultOf(d)
        # Everything must be JSON-serialisable, as the endpoint serves it.
        json.dumps([c.to_json() for c in findings.checks])
        json.dumps(findings.federation_tester)
        return findings, resolver, fetcher, prober

    @staticmethod
    def status(findings: NetworkFindings, check_id: str) -> list[Status]:
        return [c.status for c in findings.checks if c.id == check_id]

    def test_delegation_with_port(self) -> None:
        findings, resolver, fetcher, prober = self.run_checker(
            "example.com",
            {
                ("example.com", "A"): ["203.0.113.1"],
                ("matrix.example.com", "A"): ["203.0.113.7"],
            },
            {
                ("/.well-known/matrix/server", "203.0.113.1"): (
                    200,
                    {"m.server": "matrix.example.com:443"},
                ),
                ("/_matrix/federation/v1/version", "203.0.113.7"): VERSION,
            },
            {"203.0.113.7": "ok"},
        )
        assert self.status(findings, "discovery.well_known") == [Status.OK]
        assert self.status(findings, "discovery.srv") == [
            Status.OK
        ]  # not used: explicit port
        assert [t.address for t in findings.targets] == ["203.0.113.7:443"]
        assert findings.targets[0].host_header == "matrix.example.com:443"
        assert findings.targets[0].sni == "matrix.example.com"
        assert ("_matrix-fed._tcp.matrix.example.com", "SRV") not in resolver.queries
        version_requests = [r for r in fetcher.requests if "version" in r[0]]
        assert version_requests == [
            (
                "https://matrix.example.com:443/_matrix/federation/v1/version",
                ("203.0.113.7", 443),
                "matrix.example.com:443",
            )
        ]
        assert self.status(findings, "federation.version") == [Status.OK]
        assert (
            findings.federation_tester["WellKnownResult"]["m.server"]
            == "matrix.example.com:443"
        )

    def test_no_well_known_srv_fallback(self) -> None:
        findings, *_ = self.run_checker(
            "example.com",
            {
                ("example.com", "A"): ["203.0.113.1"],
                ("_matrix-fed._tcp.example.com", "SRV"): [
                    SrvRecord(
                        priority=10, weight=1, port=8448, target="fed.example.com"
                    )
                ],
                ("fed.example.com", "A"): ["203.0.113.8"],
                ("fed.example.com", "AAAA"): ["2001:db8::8"],
            },
            {
                ("/.well-known/matrix/server", "*"): (404, b""),
                ("/_matrix/federation/v1/version", "203.0.113.8"): VERSION,
            },
            {"203.0.113.8": "ok", "2001:db8::8": ConnectOutcome.TIMEOUT},
        )
        assert self.status(findings, "discovery.well_known") == [Status.OK]
        assert [t.address for t in findings.targets] == [
            "203.0.113.8:8448",
            "[2001:db8::8]:8448",
        ]
        assert all(
            t.host_header == "example.com" and t.sni == "example.com"
            for t in findings.targets
        )
        reach = {c.target: c for c in findings.checks if c.id == "connection.reachable"}
        assert reach["203.0.113.8:8448"].status is Status.OK
        assert (
            reach["[2001:db8::8]:8448"].status is Status.WARN
        )  # a dead AAAA: degraded
        assert reach["[2001:db8::8]:8448"].details["reason"] == "timeout"

    def test_nothing_works_fails_well_known(self) -> None:
        findings, *_ = self.run_checker(
            "example.com",
            {("example.com", "A"): ["203.0.113.1"]},
            {("/.well-known/matrix/server", "*"): (404, b"")},
            {},
        )
        assert self.status(findings, "discovery.well_known") == [Status.FAIL]
        assert self.status(findings, "connection.reachable") == [Status.FAIL]
        assert any(c.status is Status.FAIL for c in findings.checks)

    def test_forbidden_addresses_never_probed(self) -> None:
        findings, _, fetcher, prober = self.run_checker(
            "example.com:8448",
            {
                ("example.com", "A"): ["169.254.1.1", "0.0.0.0"],
                ("example.com", "AAAA"): ["fe80::1"],
            },
            {},
            {},
        )
        assert prober.probed == []
        assert fetcher.requests == []
        assert self.status(findings, "discovery.addresses") == [Status.FAIL]

    def test_everything_hangs_finishes_by_deadline(self) -> None:
        dns = {
            (n, t): HANG
            for n in (
                "example.com",
                "_matrix-fed._tcp.example.com",
                "_matrix._tcp.example.com",
            )
            for t in ("A", "AAAA", "SRV")
        }
        findings, *_ = self.run_checker(
            "example.com", dns, {}, {}, timeout=2, advance=2
        )
        reasons = {c.id: c.details.get("reason") for c in findings.checks}
        assert reasons["discovery.well_known"] == "timeout"
        assert reasons["discovery.srv"] == "timeout"
        assert any(c.status is Status.FAIL for c in findings.checks)

    def test_hanging_probes_become_timeouts(self) -> None:
        findings, *_ = self.run_checker(
            "example.com:8448",
            {("example.com", "A"): ["203.0.113.7"]},
            {
                ("/_matrix/federation/v1/version", "*"): HANG,
                ("/_matrix/key/v2/server", "*"): HANG,
            },
            {"203.0.113.7": HANG},
            timeout=2,
            advance=2,
        )
        for check_id in (
            "connection.reachable",
            "federation.version",
            "federation.keys",
        ):
            (check,) = [c for c in findings.checks if c.id == check_id]
            assert check.status is Status.FAIL
            assert check.details["reason"] == "timeout"
            assert "timed out" in check.summary

    def test_unexpected_exceptions_become_errors(self) -> None:
        findings, *_ = self.run_checker(
            "example.com:8448",
            {("example.com", "A"): ["203.0.113.7"], ("example.com", "AAAA"): BOOM},
            {("/_matrix/federation/v1/version", "*"): BOOM},
            {"203.0.113.7": "ok"},
        )
        (version,) = [c for c in findings.checks if c.id == "federation.version"]
        assert version.status is Status.FAIL
        assert version.details["reason"] == "error"

    def test_srv_servfail_no_targets(self) -> None:
        findings, *_ = self.run_checker(
            "example.com",
            {
                ("example.com", "A"): ["203.0.113.1"],
                ("_matrix-fed._tcp.example.com", "SRV"): DnsOutcome.SERVFAIL,
            },
            {("/.well-known/matrix/server", "*"): (404, b"")},
            {},
        )
        assert self.status(findings, "discovery.srv") == [Status.FAIL]
        assert findings.targets == ()

    def test_ip_literal(self) -> None:
        findings, resolver, *_ = self.run_checker(
            "[2001:db8::1]",
            {},
            {("/_matrix/federation/v1/version", "2001:db8::1"): VERSION},
            {"2001:db8::1": "ok"},
        )
        assert resolver.queries == []
        assert findings.targets[0].address == "[2001:db8::1]:8448"
        assert findings.targets[0].host_header == "[2001:db8::1]"
        assert findings.targets[0].sni == "2001:db8::1"

    def test_invalid_server_name(self) -> None:
        findings, *_ = self.run_checker("not a name", {}, {}, {})
        assert findings.checks[0].status is Status.FAIL
