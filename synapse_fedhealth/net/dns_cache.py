"""One run, one answer per DNS question.

A run asks the same questions several times (the server name's A/AAAA for
the well-known, the targets, the client well-known, the echo probe). Peers
would get one answer per question in that short time too, so the run shares
them: fewer queries, and no check contradicting another because a record
flapped mid-run. Timeouts are not shared: a later caller may have more of
the budget left than the one that gave up.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure

from synapse_fedhealth.net.dns import DnsResolver, normalise_name
from synapse_fedhealth.net.results import DnsOutcome, DnsResult


class RunScopedDnsCache:
    """A `DnsResolver` that remembers answers for the lifetime of one run."""

    def __init__(self, inner: DnsResolver) -> None:
        self._inner = inner
        self._done: dict[tuple[str, str], DnsResult] = {}
        self._in_flight: dict[tuple[str, str], list[defer.Deferred[DnsResult]]] = {}
        self.queries_sent = 0

    def lookup(
        self, qname: str, rdtype: str, timeout: float
    ) -> defer.Deferred[DnsResult]:
        key = (normalise_name(qname), rdtype)
        if key in self._done:
            return defer.succeed(self._done[key])
        # Each caller gets its own Deferred: one cancelling (its own deadline)
        # must not cancel the shared lookup.
        waiter: defer.Deferred[DnsResult] = defer.Deferred()
        if key in self._in_flight:
            self._in_flight[key].append(waiter)
            return waiter
        self._in_flight[key] = [waiter]
        self.queries_sent += 1
        self._inner.lookup(qname, rdtype, timeout).addBoth(self._settle, key)
        return waiter

    def _settle(self, result: DnsResult | Failure, key: tuple[str, str]) -> None:
        waiters = self._in_flight.pop(key, [])
        if isinstance(result, DnsResult) and result.outcome is not DnsOutcome.TIMEOUT:
            self._done[key] = result
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller's deadline
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
