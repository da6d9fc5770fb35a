"""The DNS lookup pool: deadlines, the pending cap and a stop that never waits.

No network: the "resolver" is a function that blocks on an event.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import defer

from synapse_fedhealth.net.dns import (
    DNS_THREAD_NAME,
    DnsLookupPool,
    DnsOutcome,
    DnsResult,
    ThreadedDnsResolver,
)

WAIT_S = 5.0  # generous: only reached when a test is about to fail


class ThreadedReactor:
    """Just `callFromThread`: the test thread runs what the workers hand back."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.Queue()
        )

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))

    def run_until(self, d: defer.Deferred[DnsResult]) -> DnsResult:
        give_up = time.monotonic() + WAIT_S
        while not d.called:
            f, args = self.calls.get(timeout=max(0.0, give_up - time.monotonic()))
            f(*args)
        results: list[DnsResult] = []
        d.addCallback(results.append)
        return results[0]


class SlowResolver:
    """A resolver function that blocks until released, and records its calls."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.asked: list[str] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, qname: str, rdtype: str, lifetime: float) -> DnsResult:
        self.asked.append(qname)
        self.threads.append(threading.current_thread())
        self.started.set()
        self.release.wait(WAIT_S)
        return DnsResult(
            qname=qname,
            rdtype=rdtype,
            outcome=DnsOutcome.ANSWER,
            addresses=("192.0.2.1",),
        )


@pytest.fixture
def reactor() -> ThreadedReactor:
    return ThreadedReactor()


@pytest.fixture
def slow() -> Iterator[SlowResolver]:
    resolver = SlowResolver()
    yield resolver
    resolver.release.set()


def _in(seconds: float) -> float:
    return time.monotonic() + seconds


def test_a_lookup_runs_in_a_named_daemon_thread(
    reactor: ThreadedReactor, slow: SlowResolver
) -> None:
    pool = DnsLookupPool(reactor, threads=2)
    slow.release.set()
    result = reactor.run_until(pool.lookup("a.example", "A", _in(WAIT_S), slow))
    assert result.outcome is DnsOutcome.ANSWER
    assert slow.asked == ["a.example"]
    (thread,) = slow.threads
    assert thread.name == DNS_THREAD_NAME == "synapse_fedhealth-dns"
    assert thread.daemon
    pool.stop()


def test_a_job_past_its_deadline_is_a_timeout_without_a_query(
    reactor: ThreadedReactor, slow: SlowResolver
) -> None:
    pool = DnsLookupPool(reactor, threads=1)
    blocking = pool.lookup("blocking.example", "A", _in(WAIT_S), slow)
    assert slow.started.wait(WAIT_S)
    # Queued behind the blocking job; its deadline passes while it waits.
    late = pool.lookup("late.example", "A", _in(0.05), slow)
    already_late = pool.lookup("already-late.example", "A", _in(-1), slow)
    time.sleep(0.1)
    slow.release.set()
    assert reactor.run_until(blocking).outcome is DnsOutcome.ANSWER
    for d, qname in ((late, "late.example"), (already_late, "already-late.example")):
        result = reactor.run_until(d)
        assert result.outcome is DnsOutcome.TIMEOUT
        assert result.qname == qname
    assert slow.asked == ["blocking.example"]
    pool.stop()


def test_a_cancelled_job_is_not_queried(
    reactor: ThreadedReactor, slow: SlowResolver
) -> None:
    pool = DnsLookupPool(reactor, threads=1)
    blocking = pool.lookup("blocking.example", "A", _in(WAIT_S), slow)
    assert slow.started.wait(WAIT_S)
    given_up = pool.lookup("given-up.example", "A", _in(WAIT_S), slow)
    given_up.addErrback(lambda f: f.trap(defer.CancelledError))
    given_up.cancel()
    after = pool.lookup("after.example", "A", _in(WAIT_S), slow)
    slow.release.set()
    reactor.run_until(blocking)
    reactor.run_until(after)
    assert slow.asked == ["blocking.example", "after.example"]
    pool.stop()


def test_beyond_the_pending_cap_a_lookup_is_an_error_at_once(
    reactor: ThreadedReactor, slow: SlowResolver
) -> None:
    pool = DnsLookupPool(reactor, threads=1, max_pending=3)
    pool.lookup("blocking.example", "A", _in(WAIT_S), slow)
    assert slow.started.wait(WAIT_S)
    queued = [pool.lookup(f"q{i}.example", "A", _in(WAIT_S), slow) for i in range(3)]
    assert not any(d.called for d in queued)
    refused = pool.lookup("one-too-many.example", "SRV", _in(WAIT_S), slow)
    assert refused.called  # synchronously, without a thread
    result = reactor.run_until(refused)
    assert result.outcome is DnsOutcome.ERROR
    assert result.error == "too many DNS lookups pending"
    assert (result.qname, result.rdtype) == ("one-too-many.example", "SRV")
    slow.release.set()
    for d in queued:
        assert reactor.run_until(d).outcome is DnsOutcome.ANSWER
    pool.stop()


def test_stop_returns_at_once_while_a_lookup_blocks(
    reactor: ThreadedReactor, slow: SlowResolver
) -> None:
    pool = DnsLookupPool(reactor, threads=1)
    pool.lookup("blocking.example", "A", _in(WAIT_S), slow)
    assert slow.started.wait(WAIT_S)
    queued = pool.lookup("queued.example", "A", _in(WAIT_S), slow)
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 0.05
    # What was still queued is answered, not left hanging.
    assert queued.called
    assert reactor.run_until(queued).outcome is DnsOutcome.ERROR
    after_stop = pool.lookup("after-stop.example", "A", _in(WAIT_S), slow)
    assert reactor.run_until(after_stop).outcome is DnsOutcome.ERROR
    assert slow.asked == ["blocking.example"]


def test_threaded_resolver_uses_the_pool(
    reactor: ThreadedReactor, slow: SlowResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = DnsLookupPool(reactor, threads=1)
    resolver = ThreadedDnsResolver(reactor, pool, ["127.0.0.1:5353"])
    monkeypatch.setattr(resolver, "_lookup_blocking", slow)
    slow.release.set()
    result = reactor.run_until(resolver.lookup("pooled.example", "AAAA", 2.0))
    assert result.outcome is DnsOutcome.ANSWER
    assert slow.threads[0].name == DNS_THREAD_NAME
    pool.stop()
