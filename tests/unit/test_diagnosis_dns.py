"""discovery.addresses names the real cause when a host has no address: a
missing record, a domain that does not exist, or a host that can't see the
public DNS at all (the zones above it are asked then)."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.checks.discovery import check_addresses
from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.engine.resolution import parent_zones
from synapse_fedhealth.net.results import DnsOutcome, DnsResult
from synapse_fedhealth.report import Status
from synapse_fedhealth.server_discovery import HostAddresses
from synapse_fedhealth.settings import RunSettings
from tests.unit.engine_helpers import check_network, fake_io
from tests.unit.fakes import FakeHttp, FakeResolver, FakeTls


def nx(name: str, rdtype: str) -> DnsResult:
    return DnsResult(qname=name, rdtype=rdtype, outcome=DnsOutcome.NXDOMAIN)


def soa(name: str, outcome: DnsOutcome) -> DnsResult:
    return DnsResult(qname=name, rdtype="SOA", outcome=outcome)


NO_HOST = HostAddresses(
    host="matrix.example.org",
    a=nx("matrix.example.org", "A"),
    aaaa=nx("matrix.example.org", "AAAA"),
)


def test_parent_zones_nearest_first_ending_with_the_tld() -> None:
    assert parent_zones("matrix.example.org") == ("example.org", "org")
    assert parent_zones("example.org") == ("org",)
    assert parent_zones("a.b.c.d.e.example.org") == (
        "b.c.d.e.example.org",
        "c.d.e.example.org",
        "d.e.example.org",
        "org",
    )
    assert parent_zones("localhost") == ()


def test_no_public_dns_is_the_hosts_resolver_not_a_record() -> None:
    result = check_addresses(
        [NO_HOST],
        parent_zones=[
            soa("example.org", DnsOutcome.NXDOMAIN),
            soa("org", DnsOutcome.NXDOMAIN),
        ],
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == "host_cannot_resolve"
    assert "this host cannot resolve public names" in result.summary
    assert "dns_servers" in (result.fix or "")
    assert "Add A" not in (result.fix or "")
    assert result.details["parent_zones"]["org"]["SOA"]["outcome"] == "nxdomain"


def test_unregistered_domain_is_named() -> None:
    result = check_addresses(
        [NO_HOST],
        parent_zones=[
            soa("example.org", DnsOutcome.NXDOMAIN),
            soa("org", DnsOutcome.NO_ANSWER),
        ],
    )
    assert result.details["reason"] == "domain_missing"
    assert "example.org itself does not exist" in result.summary


def test_existing_parent_means_the_record_is_missing() -> None:
    result = check_addresses(
        [NO_HOST],
        parent_zones=[
            soa("example.org", DnsOutcome.NO_ANSWER),
            soa("org", DnsOutcome.NO_ANSWER),
        ],
    )
    assert result.details["reason"] == "no_address"
    assert "Add A and/or AAAA records for matrix.example.org" in (result.fix or "")


class ResolverAsksParentZonesTest(SynchronousTestCase):
    def run_checker(
        self, dns: dict[tuple[str, str], Any]
    ) -> tuple[NetworkFindings, FakeResolver]:
        reactor = MemoryReactorClock()
        resolver = FakeResolver(dns)
        io = fake_io(reactor, resolver=resolver, http=FakeHttp({}), tls=FakeTls({}))
        settings = RunSettings(
            server_name="matrix.example.org", timeout_s=10, cert_expiry_warning_days=14
        )
        findings = self.successResultOf(check_network(reactor, settings, io))
        return findings, resolver

    def test_everything_nxdomain(self) -> None:
        findings, resolver = self.run_checker({})
        assert ("org", "SOA") in resolver.queries
        (addresses,) = [c for c in findings.checks if c.id == "discovery.addresses"]
        assert addresses.details["reason"] == "host_cannot_resolve"

    def test_only_the_record_missing(self) -> None:
        findings, _ = self.run_checker(
            {
                ("example.org", "SOA"): DnsOutcome.NO_ANSWER,
                ("org", "SOA"): DnsOutcome.NO_ANSWER,
            }
        )
        (addresses,) = [c for c in findings.checks if c.id == "discovery.addresses"]
        assert addresses.details["reason"] == "no_address"

    def test_not_asked_when_an_address_resolves(self) -> None:
        _, resolver = self.run_checker({("matrix.example.org", "A"): ["203.0.113.1"]})
        assert not any(rdtype == "SOA" for _, rdtype in resolver.queries)
