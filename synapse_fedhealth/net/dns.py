"""DNS lookups through dnspython, off the reactor thread.

Every lookup of every check goes through here (SPEC 2.1 `dns_servers`): never
getaddrinfo and never /etc/hosts, which remote servers can't see either.
dnspython's resolver is synchronous, so each query runs in a worker thread of
a `DnsLookupPool` and comes back as a Deferred.
"""

from __future__ import annotations

import collections
import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdataclass
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
# The pool's bounds: a run asks a handful of questions at a time, so more than
# this many waiting means lookups are hanging, and queueing more only delays
# the answer past every caller's deadline.
DNS_THREAD_NAME = "synapse_fedhealth-dns"
DEFAULT_DNS_THREADS = 10
MAX_PENDING_LOOKUPS = 64
TOO_MANY_PENDING = "too many DNS lookups pending"
NOT_STARTED_IN_TIME = "the deadline passed before the query started"


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


# (qname, rdtype, lifetime in seconds) -> result; runs in a worker thread.
BlockingLookup = Callable[[str, str, float], DnsResult]


class _LookupJob:
    """One queued lookup (mutable: `abandoned` is set on the reactor thread
    when the caller cancels; a worker that picks the job up then skips it)."""

    __slots__ = ("abandoned", "deadline", "deferred", "lookup", "qname", "rdtype")

    def __init__(
        self,
        qname: str,
        rdtype: str,
        deadline: float,
        lookup: BlockingLookup,
        deferred: defer.Deferred[DnsResult],
    ) -> None:
        self.qname = qname
        self.rdtype = rdtype
        self.deadline = deadline
        self.lookup = lookup
        self.deferred = deferred
        self.abandoned = False


class DnsLookupPool:
    """Worker threads for blocking DNS lookups, bounded in every direction.

    Unlike Twisted's `ThreadPool`:
    - each job has an absolute deadline (`time.monotonic()`); a job that
      reaches a worker after it is a TIMEOUT at once, without a query, and a
      query is never given a lifetime past it;
    - a cancelled job is not run;
    - at most `max_pending` jobs wait; beyond that a lookup is an ERROR
      ("too many DNS lookups pending") at once;
    - `stop()` never joins: a query blocked in dnspython must not hold up the
      reactor's shutdown. Workers are daemon threads, so they never hold up the
      process's exit either.

    Threads start on demand, up to `threads`. `lookup` and `stop` are called
    on the reactor thread; results come back through `reactor.callFromThread`.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        threads: int = DEFAULT_DNS_THREADS,
        max_pending: int = MAX_PENDING_LOOKUPS,
    ) -> None:
        if threads < 1 or max_pending < 0:
            raise ValueError("a DNS pool needs a thread and a non-negative queue")
        self._reactor = reactor
        self._max_threads = threads
        self._max_pending = max_pending
        self._jobs: collections.deque[_LookupJob] = collections.deque()
        self._work = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._stopped = False

    @property
    def threads_started(self) -> int:
        return len(self._workers)

    def lookup(
        self, qname: str, rdtype: str, deadline: float, blocking: BlockingLookup
    ) -> defer.Deferred[DnsResult]:
        """Run `blocking(qname, rdtype, lifetime)` in a worker before `deadline`.

        Never fails: refusals and expiry are `DnsResult` outcomes.
        """

        def abandon(_: defer.Deferred[DnsResult]) -> None:
            # The caller gave up: free its place in the queue, and make sure no
            # worker starts the query.
            job.abandoned = True
            with self._work:
                if job in self._jobs:
                    self._jobs.remove(job)

        d: defer.Deferred[DnsResult] = defer.Deferred(abandon)
        job = _LookupJob(qname, rdtype, deadline, blocking, d)
        with self._work:
            if self._stopped:
                refusal: str | None = "the DNS lookup pool is stopped"
            elif len(self._jobs) >= self._max_pending:
                refusal = TOO_MANY_PENDING
            else:
                refusal = None
                self._jobs.append(job)
                waiting_for_a_worker = len(self._jobs) > self._idle_workers
                if waiting_for_a_worker and len(self._workers) < self._max_threads:
                    self._start_worker()
                self._work.notify()
        if refusal is not None:
            d.callback(_result(job, DnsOutcome.ERROR, refusal))
        return d

    def stop(self) -> None:
        """Stop taking jobs and answer the queued ones; returns at once.

        A worker in the middle of a query finishes it (within its lifetime)
        and exits; its answer is dropped if the reactor is gone.
        """
        with self._work:
            self._stopped = True
            dropped = list(self._jobs)
            self._jobs.clear()
            self._work.notify_all()
        for job in dropped:
            _deliver(job, _result(job, DnsOutcome.ERROR, "DNS lookups were stopped"))

    def _start_worker(self) -> None:
        # Called with self._work held.
        worker = threading.Thread(
            target=self._work_loop, name=DNS_THREAD_NAME, daemon=True
        )
        self._workers.append(worker)
        worker.start()

    def _work_loop(self) -> None:
        while True:
            with self._work:
                self._idle_workers += 1
                while not self._jobs and not self._stopped:
                    self._work.wait()
                self._idle_workers -= 1
                if self._stopped:
                    self._workers.remove(threading.current_thread())
                    return
                job = self._jobs.popleft()
            if job.abandoned:
                continue
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                result = _result(job, DnsOutcome.TIMEOUT, NOT_STARTED_IN_TIME)
            else:
                try:
                    result = job.lookup(
                        job.qname, job.rdtype, max(MIN_QUERY_LIFETIME_S, remaining)
                    )
                except Exception as e:
                    # The lookup functions catch their errors; a pool must not
                    # lose a worker, nor leave a caller unanswered, if one didn't.
                    result = _result(job, DnsOutcome.ERROR, _short(e))
            self._reactor.callFromThread(_deliver, job, result)


def _result(job: _LookupJob, outcome: DnsOutcome, error: str) -> DnsResult:
    return DnsResult(qname=job.qname, rdtype=job.rdtype, outcome=outcome, error=error)


def _deliver(job: _LookupJob, result: DnsResult) -> None:
    # A cancelled caller's Deferred has already fired (CancelledError).
    if not job.deferred.called:
        job.deferred.callback(result)


class ThreadedDnsResolver:
    """dnspython's stub resolver, run in `threadpool`: a `DnsLookupPool`, or a
    Twisted `ThreadPool` (where a lookup that starts after its deadline is
    still a TIMEOUT without a query, but nothing else is bounded).

    `dns_servers` entries are "IP", "IP:PORT" or "[IPv6]:PORT"; empty means
    the nameservers of /etc/resolv.conf.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: DnsLookupPool | ThreadPool,
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
        deadline = time.monotonic() + lifetime
        if isinstance(self._threadpool, DnsLookupPool):
            return self._threadpool.lookup(
                qname, rdtype, deadline, self._lookup_blocking
            )
        d: defer.Deferred[DnsResult] = deferToThreadPool(
            self._reactor,
            self._threadpool,
            self._lookup_before,
            qname,
            rdtype,
            deadline,
        )
        return d

    def _lookup_before(self, qname: str, rdtype: str, deadline: float) -> DnsResult:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return DnsResult(
                qname=qname,
                rdtype=rdtype,
                outcome=DnsOutcome.TIMEOUT,
                error=NOT_STARTED_IN_TIME,
            )
        return self._lookup_blocking(
            qname, rdtype, max(MIN_QUERY_LIFETIME_S, remaining)
        )

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
        if rrset.rdclass != dns.rdataclass.IN:
            # Another class (CH, HS, ...) reuses the type numbers with other
            # fields: nothing a peer would connect to.
            continue
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
