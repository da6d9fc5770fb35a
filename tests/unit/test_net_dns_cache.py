from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.net.dns_cache import RunScopedDnsCache
from synapse_fedhealth.net.results import DnsOutcome, DnsResult
from tests.unit.fakes import HANG, FakeResolver


def _result(qname: str, outcome: DnsOutcome) -> DnsResult:
    return DnsResult(qname=qname, rdtype="A", outcome=outcome)


class RunScopedDnsCacheTests(SynchronousTestCase):
    def test_same_question_is_asked_once(self) -> None:
        inner = FakeResolver(default=HANG)
        cache = RunScopedDnsCache(inner)
        first = cache.lookup("Example.COM.", "A", 5)
        second = cache.lookup("example.com", "A", 5)
        other = cache.lookup("example.com", "AAAA", 5)
        self.assertEqual(len(inner.pending), 2)
        answer = _result("example.com", DnsOutcome.NXDOMAIN)
        inner.pending[0][2].callback(answer)
        self.assertIs(self.successResultOf(first), answer)
        self.assertIs(self.successResultOf(second), answer)
        self.assertIs(self.successResultOf(cache.lookup("example.com", "A", 1)), answer)
        self.assertNoResult(other)
        self.assertEqual(cache.queries_sent, 2)

    def test_a_cancelled_waiter_does_not_cancel_the_others(self) -> None:
        inner = FakeResolver(default=HANG)
        cache = RunScopedDnsCache(inner)
        impatient = cache.lookup("example.com", "A", 1)
        patient = cache.lookup("example.com", "A", 5)
        impatient.cancel()
        self.failureResultOf(impatient, defer.CancelledError)
        answer = _result("example.com", DnsOutcome.NXDOMAIN)
        inner.pending[0][2].callback(answer)
        self.assertIs(self.successResultOf(patient), answer)

    def test_timeouts_are_not_remembered(self) -> None:
        inner = FakeResolver(default=HANG)
        cache = RunScopedDnsCache(inner)
        first = cache.lookup("example.com", "A", 1)
        inner.pending[0][2].callback(_result("example.com", DnsOutcome.TIMEOUT))
        self.assertEqual(self.successResultOf(first).outcome, DnsOutcome.TIMEOUT)
        cache.lookup("example.com", "A", 5)
        self.assertEqual(len(inner.pending), 2)
