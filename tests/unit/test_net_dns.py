"""dnspython answers into DnsResults, and failures into outcomes (no network)."""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.message
import dns.resolver
import dns.rrset
import pytest
from twisted.python.threadpool import ThreadPool

from synapse_fedhealth.net.dns import (
    MAX_RECORDS_PER_ANSWER,
    DnsOutcome,
    ThreadedDnsResolver,
    result_from_response,
)


def response(qname: str, rdtype: str, *rrsets: dns.rrset.RRset) -> dns.message.Message:
    query = dns.message.make_query(qname, rdtype)
    reply = dns.message.make_response(query)
    reply.answer.extend(rrsets)
    return reply


def test_srv_answer() -> None:
    rr = dns.rrset.from_text(
        "_matrix-fed._tcp.example.com.",
        60,
        "IN",
        "SRV",
        "10 5 8448 Fed.Example.com.",
        "20 0 443 .",
    )
    result = result_from_response(
        "_matrix-fed._tcp.example.com",
        "SRV",
        response("_matrix-fed._tcp.example.com", "SRV", rr),
    )
    assert result.outcome is DnsOutcome.ANSWER
    assert [(r.target, r.port) for r in result.srv] == [
        ("fed.example.com", 8448),
        (".", 443),
    ]


def test_cname_chain_is_reported() -> None:
    cname = dns.rrset.from_text(
        "alias.example.com.", 60, "IN", "CNAME", "real.example.net."
    )
    a = dns.rrset.from_text("real.example.net.", 60, "IN", "A", "203.0.113.7")
    result = result_from_response(
        "alias.example.com", "A", response("alias.example.com", "A", cname, a)
    )
    assert result.addresses == ("203.0.113.7",)
    assert result.cnames == (("alias.example.com", "real.example.net"),)


def test_huge_answers_are_capped() -> None:
    ips = [f"10.0.{i // 256}.{i % 256}" for i in range(500)]
    rr = dns.rrset.from_text("big.example.com.", 60, "IN", "A", *ips)
    result = result_from_response(
        "big.example.com", "A", response("big.example.com", "A", rr)
    )
    assert len(result.addresses) == MAX_RECORDS_PER_ANSWER
    assert result.truncated


def test_no_records_of_that_type() -> None:
    result = result_from_response(
        "example.com", "AAAA", response("example.com", "AAAA")
    )
    assert result.outcome is DnsOutcome.NO_ANSWER
    assert result.outcome.is_negative


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (dns.resolver.NXDOMAIN(), DnsOutcome.NXDOMAIN),
        (dns.resolver.NoNameservers(), DnsOutcome.SERVFAIL),
        (dns.resolver.LifetimeTimeout(timeout=1.0, errors=[]), DnsOutcome.TIMEOUT),
        (dns.exception.Timeout(), DnsOutcome.TIMEOUT),
        (ValueError("bad name"), DnsOutcome.ERROR),
    ],
)
def test_failures_map_to_outcomes(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, outcome: DnsOutcome
) -> None:
    def _raise(*args: Any, **kwargs: Any) -> None:
        raise exc

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", _raise)
    resolver = ThreadedDnsResolver(None, ThreadPool(), ["127.0.0.1:5353"])
    result = resolver._lookup_blocking("example.com", "A", 1.0)
    assert result.outcome is outcome


def test_configured_servers_with_ports() -> None:
    resolver = ThreadedDnsResolver(
        None, ThreadPool(), ["127.0.0.1:5353", "[::1]:53", "10.0.0.1"]
    )
    made = resolver._make_resolver()
    servers: list[Any] = list(made.nameservers)
    assert [(n.address, n.port) for n in servers] == [
        ("127.0.0.1", 5353),
        ("::1", 53),
        ("10.0.0.1", 53),
    ]


def test_bad_server_entry_rejected() -> None:
    with pytest.raises(ValueError):
        ThreadedDnsResolver(None, ThreadPool(), ["dns.example.com"])
