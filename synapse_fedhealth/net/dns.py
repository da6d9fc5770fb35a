"""DNS lookups through dnspython, off the reactor thread.

Every lookup of every check goes through here (SPEC 2.1 `dns_servers`): never
getaddrinfo and never /etc/hosts, which remote servers can't see either.
dnspython's resolver is synchronous, so each query runs in an injected
threadpool and comes back as a Deferred.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, Protocol

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from synapse_fedhealth.config import parse_dns_server
from synapse_fedhealth.net.results import DnsOutcome as DnsOutcome
from synapse_fedhealth.net.results import DnsResult as DnsResult
from synapse_fedhealth.net.results import SrvRecord as SrvRecord

# A single query never waits longer than this, even with a generous run budget:
# Synapse's own resolver gives up well before.
MAX_QUERY_LIFETIME_S = 5.0
# Below this a query can't complete a round trip; keeps lifetime > 0 for dnspython.
MIN_QUERY_LIFETIME_S = 0.05
# Hostile zones can answer with thousands of records: only this many are kept.
MAX_RECORDS_PER_ANSWER = 32
MAX_CNAMES_KEPT = 8


class DnsResolver(Protocol):
    """What the checks need from DNS. Tests pass a fake."""

    def lookup(
        self, qname: str, rdtype: str, timeout: float
    ) -> defer.Deferred[DnsResult]:
        """Query `qname` for `rdtype` ("A", "AAAA" or "SRV").

        Never fails: every problem is a `DnsResult` outcome. `timeout` bounds
        the query's lifetime in seconds.
        """


def normalise_name(name: str) -> str:
    return name.rstrip(".").lower()


class ThreadedDnsResolver:
    """dnspython's stub resolver, run in `threadpool`.

    `dns_servers` entries are "IP", "IP:PORT" or "[IPv6]:PORT"; empty means
    the nameservers of /etc/resolv.conf.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: ThreadPool,
        dns_servers: Sequence[str] = (),
        *,
        max_lifetime_s: float = MAX_QUERY_LIFETIME_S,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        # Parsed now so that a bad entry fails fast, not in a thread.
        self._servers = tuple(parse_dns_server(s) for s in dns_servers)
        self._max_lifetime_s = max_lifetime_s

    def lookup(
        self, qname: str, rdtype: str, timeout: float
    ) -> defer.Deferred[DnsResult]:
        lifetime = max(MIN_QUERY_LIFETIME_S, min(timeout, self._max_lifetime_s))
        d: defer.Deferred[DnsResult] = deferToThreadPool(
            self._reactor,
            self._threadpool,
            self._lookup_blocking,
            qname,
            rdtype,
            lifetime,
        )
        return d

    def _make_resolver(self) -> dns.resolver.Resolver:
        if not self._servers:
            # Reads /etc/resolv.conf: done here, in the thread, not on the reactor.
            return dns.resolver.Resolver(configure=True)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(ip, port) for ip, port in self._servers
        ]
        return resolver

    def _lookup_blocking(self, qname: str, rdtype: str, lifetime: float) -> DnsResult:
        try:
            resolver = self._make_resolver()
            resolver.timeout = lifetime
            resolver.lifetime = lifetime
            # No search list: remote servers resolve absolute names only.
            name = dns.name.from_text(qname)
            answer = resolver.resolve(
                name, rdtype, search=False, raise_on_no_answer=False, lifetime=lifetime
            )
        except dns.resolver.NXDOMAIN:
            return DnsResult(qname=qname, rdtype=rdtype, outcome=DnsOutcome.NXDOMAIN)
        except dns.resolver.NoNameservers as e:
            return DnsResult(
                qname=qname,
                rdtype=rdtype,
                outcome=DnsOutcome.SERVFAIL,
                error=_describe_no_nameservers(e),
            )
        except dns.exception.Timeout as e:
            return DnsResult(
                qname=qname, rdtype=rdtype, outcome=DnsOutcome.TIMEOUT, error=_short(e)
            )
        except Exception as e:  # malformed names, YXDOMAIN, no resolv.conf, ...
            return DnsResult(
                qname=qname, rdtype=rdtype, outcome=DnsOutcome.ERROR, error=_short(e)
            )
        return result_from_response(qname, rdtype, answer.response)


def result_from_response(
    qname: str, rdtype: str, response: dns.message.Message
) -> DnsResult:
    """Turn a NOERROR response into a `DnsResult` (pure; tested directly)."""
    wanted = dns.rdatatype.from_text(rdtype)
    addresses: list[str] = []
    srv: list[SrvRecord] = []
    cnames: list[tuple[str, str]] = []
    seen = 0
    truncated = False
    for rrset in response.answer:
        for rdata in rrset:
            seen += 1
            if seen > MAX_RECORDS_PER_ANSWER:
                truncated = True
                break
            if rrset.rdtype == dns.rdatatype.CNAME:
                if len(cnames) < MAX_CNAMES_KEPT:
                    cnames.append(
                        (
                            normalise_name(rrset.name.to_text()),
                            normalise_name(rdata.target.to_text()),
                        )
                    )
            elif rrset.rdtype != wanted:
                continue
            elif wanted in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addresses.append(str(ipaddress.ip_address(rdata.address)))
            elif wanted == dns.rdatatype.SRV:
                srv.append(
                    SrvRecord(
                        priority=int(rdata.priority),
                        weight=int(rdata.weight),
                        port=int(rdata.port),
                        target=normalise_name(rdata.target.to_text()) or ".",
                    )
                )
        if truncated:
            break
    outcome = DnsOutcome.ANSWER if (addresses or srv) else DnsOutcome.NO_ANSWER
    return DnsResult(
        qname=qname,
        rdtype=rdtype,
        outcome=outcome,
        addresses=tuple(addresses),
        srv=tuple(srv),
        cnames=tuple(cnames),
        truncated=truncated,
    )


def _describe_no_nameservers(e: dns.resolver.NoNameservers) -> str:
    errors = e.kwargs.get("errors") or []
    truncated = any(
        isinstance(err, tuple)
        and len(err) > 3
        and isinstance(err[3], dns.message.Truncated)
        for err in errors
    )
    if truncated:
        return _short(
            Exception(
                "the answer over UDP was truncated (TC) and the retry over TCP failed: "
                + str(e)
            )
        )
    return _short(e)


def _short(e: BaseException, limit: int = 300) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "…"
