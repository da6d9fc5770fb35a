"""The one place that builds the I/O objects: the DNS thread pool, the
resolver and its run-scoped cache, the HTTP client, the TLS prober and the
trust store. The module and the `check` command both come through here.

`ProcessIO` lives as long as the process (one thread pool, trust stores read
once); `ProcessIO.for_run` gives the `RunIO` that the families of one run
share, so the same DNS question gets the same answer within a run, and the
checks that go to a target ride the one TLS connection the run keeps to it
(closed by the runner when the run ends).

The network code (dnspython, the HTTP client, the TLS prober) is imported by
the first run, not when the module loads: Synapse's start-up does not wait
for it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attr

if TYPE_CHECKING:
    from twisted.python.threadpool import ThreadPool

    from synapse_fedhealth.engine.probes import TargetConnections
    from synapse_fedhealth.net.aia import IssuerFetcher
    from synapse_fedhealth.net.dns import DnsLookupPool, DnsResolver
    from synapse_fedhealth.net.http import HttpFetcher
    from synapse_fedhealth.net.tls import TlsProber, TrustStore
    from synapse_fedhealth.settings import RunSettings


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class RunIO:
    """The I/O objects the families of one run share. Tests build it from
    fakes."""

    resolver: DnsResolver
    http: HttpFetcher
    tls: TlsProber
    trust: TrustStore
    # Why the configured CA files could not be used ("" when they could);
    # then `trust` is the system store and tls.certificate says so.
    trust_error: str = ""
    wall_clock: Callable[[], float] = time.time
    # Fetches a certificate's issuer from its AIA URL (None: never looked up;
    # tls.certificate then can't tell a missing intermediate from an
    # untrusted CA).
    issuers: IssuerFetcher | None = None
    # The run's connections to its targets, one per address, shared by the
    # probes and the later checks that go to the same target; whoever ends
    # the run closes them (`close_all`). None: each probe and request on a
    # connection of its own, through `http` and `tls` (what fakes do).
    targets: TargetConnections | None = None


def load_trust_store(ca_files: tuple[str, ...]) -> tuple[TrustStore, str]:
    """The store for `ca_files`, or the system store and why not.

    A bad CA file is a config problem (linted by config.tls_listener); the
    network checks judge with the system store rather than not at all."""
    from synapse_fedhealth.net.tls import TrustStore

    try:
        return TrustStore(ca_files), ""
    except (OSError, ValueError) as e:
        return TrustStore(()), f"could not load {', '.join(ca_files)}: {e}"


# What a run imports that loading the module does not (`ProcessIO.for_run`
# and `DefaultFamilies` import them inside the functions that need them, so
# that Synapse's start-up does not pay for them): about 110 ms of imports.
# `import_run_modules` imports them ahead of the first run, in a thread.
RUN_MODULES = (
    "synapse_fedhealth.engine.probes",
    "synapse_fedhealth.families.network",
    "synapse_fedhealth.families.notary",
    "synapse_fedhealth.families.outbound",
    "synapse_fedhealth.families.outside",
    "synapse_fedhealth.families.targets",
    "synapse_fedhealth.net.aia",
    "synapse_fedhealth.net.dns",
    "synapse_fedhealth.net.dns_cache",
    "synapse_fedhealth.net.http",
    "synapse_fedhealth.net.tls",
)


def import_run_modules() -> None:
    """Import what a run needs. Meant for a worker thread between start-up
    and the first run: there the imports share the interpreter with the
    reactor instead of holding it for their whole length in the run's first
    step."""
    for name in RUN_MODULES:
        importlib.import_module(name)


class ProcessIO:
    """The process-wide I/O: the DNS lookup pool and the trust stores.

    Tests that run the engine against real servers may pass their own
    Twisted `threadpool`."""

    def __init__(
        self, reactor: Any, *, threadpool: DnsLookupPool | ThreadPool | None = None
    ) -> None:
        self.reactor = reactor
        self._threadpool = threadpool
        self._trust: dict[tuple[str, ...], tuple[TrustStore, str]] = {}

    @property
    def threadpool(self) -> DnsLookupPool | ThreadPool:
        """Made when first asked for (by the first run): its threads start on
        the first lookup anyway, and importing dnspython is a cost the
        homeserver's start-up need not pay."""
        if self._threadpool is None:
            from synapse_fedhealth.net.dns import DnsLookupPool

            self._threadpool = DnsLookupPool(self.reactor)
        return self._threadpool

    def stop(self) -> None:
        """Never waits for a hanging lookup: shutdown must not block."""
        # Nothing to stop before a run made the pool (or one was given).
        if self._threadpool is None:
            return
        from synapse_fedhealth.net.dns import DnsLookupPool

        if isinstance(self._threadpool, DnsLookupPool):
            self._threadpool.stop()

    def trust_store(self, ca_files: tuple[str, ...]) -> tuple[TrustStore, str]:
        """Read once per process: parsing the system store costs milliseconds
        of reactor time, every run would pay them."""
        if ca_files not in self._trust:
            self._trust[ca_files] = load_trust_store(ca_files)
        return self._trust[ca_files]

    def for_run(self, settings: RunSettings) -> RunIO:
        # Imported once, by the first run (later runs find them loaded).
        from synapse_fedhealth.engine.probes import TargetConnections
        from synapse_fedhealth.net.aia import PlainHttpIssuerFetcher
        from synapse_fedhealth.net.dns import ThreadedDnsResolver
        from synapse_fedhealth.net.dns_cache import RunScopedDnsCache
        from synapse_fedhealth.net.http import ProbeHttpClient
        from synapse_fedhealth.net.tls import TwistedTlsProber

        resolver = RunScopedDnsCache(
            ThreadedDnsResolver(self.reactor, self.threadpool, settings.dns_servers)
        )
        trust, trust_error = self.trust_store(settings.ca_files)
        http = ProbeHttpClient(
            self.reactor,
            resolver,
            trust,
            user_agent=settings.user_agent,
            ip_ranges=settings.ip_ranges,
        )
        tls = TwistedTlsProber(self.reactor)
        return RunIO(
            resolver=resolver,
            http=http,
            tls=tls,
            # One TLS connection per target for the run: the handshake
            # probe's, reused by every request to that target.
            targets=TargetConnections(
                lambda target: http.pinned_target(
                    tls, target.ip, target.port, target.sni
                )
            ),
            trust=trust,
            trust_error=trust_error,
            issuers=PlainHttpIssuerFetcher(
                self.reactor, resolver, user_agent=settings.user_agent
            ),
        )
