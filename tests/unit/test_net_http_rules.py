"""Where a fetch may go: a redirect from a public address does not lead into
a private network (NAT64 and 6to4 spellings included), and a Location with
control characters is refused."""

from __future__ import annotations

from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from synapse_fedhealth.homeserver import _federation_ip_ranges_from_raw
from synapse_fedhealth.net.addresses import (
    AddressClass,
    FederationIpRanges,
    classify_address,
)
from synapse_fedhealth.net.http import ProbeHttpClient
from synapse_fedhealth.net.results import HttpResult, ProbeError
from synapse_fedhealth.net.tls import TrustStore
from tests.unit.fakes import FakeResolver

REDIRECTS = {
    b"/to-rfc1918": b"https://10.0.0.5/admin",
    b"/to-nat64-loopback": b"https://[64:ff9b::7f00:1]:6379/",
    b"/to-6to4-private": b"https://[2002:c0a8:0101::1]/",
    b"/to-internal-name": b"https://internal.example.com/",
    b"/to-public": b"https://other.example.com/final",
    b"/control-chars": b"https://other.example.com/\x1b[2J",
}
DNS = {
    ("internal.example.com", "A"): ["192.168.1.1"],
    ("other.example.com", "A"): ["203.0.113.9"],
}


class Site(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> Any:
        location = REDIRECTS.get(request.path)
        if location is not None:
            request.setResponseCode(302)
            request.setHeader(b"location", location)
            return b""
        return b"{}"


class RedirectRuleTest(SynchronousTestCase):
    def fetch(
        self, path: str, first_hop: str, ip_ranges: FederationIpRanges | None = None
    ) -> HttpResult:
        agent = RequestTraversalAgent(Site())
        client = ProbeHttpClient(
            MemoryReactorClock(),
            FakeResolver(DNS),
            TrustStore(),
            user_agent="Synapse/test",
            agent_factory=lambda endpoint: agent,
            ip_ranges=ip_ranges,
        )
        d = client.get(
            f"https://example.com{path}",
            connect_to=(first_hop, 443),
            timeout=5,
            follow_redirects=True,
        )
        for _ in range(20):
            agent.flush()
        return self.successResultOf(d)

    def test_public_to_private_is_not_followed(self) -> None:
        for path in (
            "/to-rfc1918",
            "/to-nat64-loopback",
            "/to-6to4-private",
            "/to-internal-name",
        ):
            result = self.fetch(path, first_hop="203.0.113.7")
            assert result.error is ProbeError.PRIVATE_REDIRECT, (path, result)
            assert "not followed" in result.error_message
            assert len(result.redirects) == 1

    def test_public_to_public_and_private_to_private_are_followed(self) -> None:
        assert self.fetch("/to-public", first_hop="203.0.113.7").status == 200
        # A home or split-horizon setup: its well-known host is private too.
        assert self.fetch("/to-internal-name", first_hop="192.168.1.2").status == 200

    def test_a_redirect_into_our_own_whitelist_is_followed(self) -> None:
        own = _federation_ip_ranges_from_raw(
            {"ip_range_whitelist": ["10.0.0.0/24", "192.168.1.1"]}
        )
        # 2002:c0a8:0101::1 is 6to4 of 192.168.1.1: Synapse's generate_ip_set
        # adds the 6to4 form of every IPv4 range to the whitelist.
        for path in ("/to-rfc1918", "/to-internal-name", "/to-6to4-private"):
            result = self.fetch(path, first_hop="203.0.113.7", ip_ranges=own)
            assert result.status == 200, (path, result)
            assert len(result.redirects) == 1
        # Only what the whitelist names: loopback (through NAT64) is refused.
        result = self.fetch(
            "/to-nat64-loopback", first_hop="203.0.113.7", ip_ranges=own
        )
        assert result.error is ProbeError.PRIVATE_REDIRECT
        other = _federation_ip_ranges_from_raw({"ip_range_whitelist": ["10.9.0.0/16"]})
        result = self.fetch("/to-rfc1918", first_hop="203.0.113.7", ip_ranges=other)
        assert result.error is ProbeError.PRIVATE_REDIRECT

    def test_a_location_with_control_characters_is_refused(self) -> None:
        result = self.fetch("/control-chars", first_hop="203.0.113.7")
        assert result.error is ProbeError.BAD_REDIRECT
        assert "\x1b" not in result.error_message


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("64:ff9b::7f00:1", AddressClass.PRIVATE),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", AddressClass.FORBIDDEN),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", AddressClass.PUBLIC),
        ("2002:0a00:0001::1", AddressClass.PRIVATE),  # 6to4 of 10.0.0.1
        ("2002:0000:0001::1", AddressClass.FORBIDDEN),  # 6to4 of 0.0.0.1
        ("2002:0808:0808::1", AddressClass.PUBLIC),
        ("::ffff:192.168.0.1", AddressClass.PRIVATE),
        ("2001:db8::1", AddressClass.PUBLIC),
    ],
)
def test_embedded_ipv4_is_classified_as_itself(
    address: str, expected: AddressClass
) -> None:
    assert classify_address(address) is expected
