"""Server-name resolution as a Synapse peer does it (spec v1.19, "Resolving
server names", with Synapse's client semantics), observed step by step.

`ServerNameResolver.resolve(name, deadline)` returns a `Resolution`: every
lookup and fetch of discovery, interpreted once, and the ordered targets
peers connect to. It never raises and never outlives its deadline: what did
not arrive in time is missing from the `Resolution`, which says so.

Nothing here imports Synapse: the command line uses it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attr
from twisted.internet import defer

from synapse_fedhealth.engine.deadline import WELL_KNOWN_SHARE, BoundFailure, Deadline
from synapse_fedhealth.engine.spawn import spawn
from synapse_fedhealth.matrix_names import bare_host, parse_and_validate_server_name
from synapse_fedhealth.net.addresses import (
    AddressClass,
    classify_address,
    format_address,
    is_ip_literal,
)
from synapse_fedhealth.net.dns import DnsResolver
from synapse_fedhealth.net.http import WELL_KNOWN_MAX_SIZE, HttpFetcher
from synapse_fedhealth.net.results import (
    DnsOutcome,
    DnsResult,
    HttpResult,
    ProbeError,
)
from synapse_fedhealth.server_discovery import (
    DEFAULT_FEDERATION_PORT,
    SRV_FED_PREFIX,
    SRV_LEGACY_PREFIX,
    HostAddresses,
    Resolution,
    SrvDecision,
    SrvKind,
    Target,
    WellKnownKind,
    WellKnownOutcome,
    decide_srv,
    interpret_well_known,
)

# Limits against hostile DNS: at most this many addresses/hosts are used.
MAX_TARGETS = 16
MAX_SRV_HOSTS = 8
MAX_WELL_KNOWN_ADDRESSES = 8
WELL_KNOWN_PORT = 443
MAX_PARENT_ZONES = 4  # SOA lookups above a host without address


class _Draft:
    """The `Resolution` being filled in, step by step. Each step replaces the
    value, so whatever the deadline cuts short is still a consistent one."""

    def __init__(self, server_name: str) -> None:
        self.value = Resolution(server_name=server_name)

    def set(self, **changes: Any) -> None:
        self.value = attr.evolve(self.value, **changes)

    def add_host(self, host: HostAddresses) -> None:
        self.set(hosts=(*self.value.hosts, host))

    def freeze(self) -> Resolution:
        value = self.value
        if value.well_known_consulted and value.well_known is None:
            name = value.server_name
            value = attr.evolve(
                value,
                well_known=WellKnownOutcome(
                    kind=WellKnownKind.TIMEOUT,
                    http=HttpResult(
                        url=well_known_url(name),
                        host_header=name,
                        sni=name,
                        error=ProbeError.TIMEOUT,
                        error_message="timed out",
                    ),
                    problem="the request timed out",
                    reason="timeout",
                ),
            )
        return value


def parent_zones(host: str) -> tuple[str, ...]:
    """The names above `host`, nearest first, always ending with its TLD
    (`a.example.org` -> `example.org`, `org`), at most MAX_PARENT_ZONES: the
    nearest one that exists tells whether only the record is missing."""
    labels = [label for label in host.rstrip(".").split(".") if label]
    above = [".".join(labels[i:]) for i in range(1, len(labels))]
    if len(above) > MAX_PARENT_ZONES:
        above = above[: MAX_PARENT_ZONES - 1] + above[-1:]
    return tuple(above)


def well_known_url(server_name: str) -> str:
    return f"https://{server_name}/.well-known/matrix/server"


class ServerNameResolver:
    """Finds the addresses peers use for a server name, with `resolver` (DNS)
    and `http` (the well-known); `wall_clock` dates cache headers."""

    def __init__(
        self,
        resolver: DnsResolver,
        http: HttpFetcher,
        *,
        wall_clock: Callable[[], float],
    ) -> None:
        self._dns = resolver
        self._http = http
        self._wall_clock = wall_clock

    async def resolve(self, server_name: str, deadline: Deadline) -> Resolution:
        draft = _Draft(server_name)

        def stopped(failure: BoundFailure) -> None:
            if failure.kind == "error":
                draft.set(error=str(failure))

        await deadline.bound(
            lambda: self._discover(draft, deadline), stopped, what="server discovery"
        )
        return draft.freeze()

    # -- the spec's steps --------------------------------------------------------

    async def _discover(self, draft: _Draft, deadline: Deadline) -> None:
        name = draft.value.server_name
        try:
            host, port = parse_and_validate_server_name(name)
        except ValueError as e:
            draft.set(invalid_name=str(e), complete=True)
            return
        if is_ip_literal(host) or port is not None:
            # Steps 1 and 2: no well-known, no SRV.
            draft.set(
                srv_not_used_because=f"{name} is an IP literal"
                if is_ip_literal(host)
                else f"{name} has an explicit port"
            )
            await self._resolve_direct(
                draft, host, port, host_header=name, sni=bare_host(host), until=deadline
            )
            await self._probe_parent_zones(draft, deadline)
            draft.set(complete=True)
            return
        # Step 3 (the well-known) and steps 4-5 of the server name (SRV),
        # concurrently: both are needed when there is no delegation.
        draft.set(well_known_consulted=True)
        well_known_until = deadline.share(WELL_KNOWN_SHARE)
        await _gather(
            self._fetch_well_known(draft, name, well_known_until),
            self._lookup_name_srv(draft, name, well_known_until),
        )
        well_known, name_srv = draft.value.well_known, draft.value.name_srv
        if well_known is not None and well_known.delegated is not None:
            draft.set(delegated=well_known.delegated)
            await self._resolve_delegated(draft, well_known.delegated, deadline)
        elif name_srv is not None:
            await self._resolve_with_srv(
                draft, name, name_srv, host_header=name, sni=name, until=deadline
            )
        await self._probe_parent_zones(draft, deadline)
        draft.set(complete=True)

    async def _probe_parent_zones(self, draft: _Draft, until: Deadline) -> None:
        """When no host has an address, ask for the SOA of the zones above the
        first one: if even those don't resolve, the records are not what is
        missing, this host's resolver is."""
        hosts = draft.value.hosts
        if not hosts or any(h.addresses for h in hosts):
            return
        zones = parent_zones(hosts[0].host)
        if not zones:
            return
        found = await _gather(*(self._lookup(z, "SOA", until) for z in zones))
        draft.set(parent_zones=tuple(found))

    async def _fetch_well_known(
        self, draft: _Draft, name: str, until: Deadline
    ) -> None:
        addresses = await self._host_addresses(name, until)
        url = well_known_url(name)
        usable = [
            a
            for a in addresses.addresses
            if classify_address(a) is not AddressClass.FORBIDDEN
        ][:MAX_WELL_KNOWN_ADDRESSES]
        if not usable:
            draft.set(
                well_known_by_address=(),
                well_known=self._interpret(
                    _no_well_known_address(url, name, addresses)
                ),
            )
            return
        results = await _gather(
            *(
                self._get(
                    url,
                    until,
                    connect_to=(ip, WELL_KNOWN_PORT),
                    host_header=name,
                    sni=name,
                    max_bytes=WELL_KNOWN_MAX_SIZE,
                    follow_redirects=True,
                    verify_tls=True,
                )
                for ip in usable
            )
        )
        # A peer uses whichever address connects first.
        connected = [
            r
            for r in results
            if r.error not in (ProbeError.REFUSED, ProbeError.UNREACHABLE)
        ]
        draft.set(
            well_known_by_address=tuple(
                (format_address(ip, WELL_KNOWN_PORT), self._interpret(r))
                for ip, r in zip(usable, results, strict=True)
            ),
            well_known=self._interpret(connected[0] if connected else results[0]),
        )

    def _interpret(self, http: HttpResult) -> WellKnownOutcome:
        return interpret_well_known(http, now=self._wall_clock())

    async def _lookup_name_srv(self, draft: _Draft, name: str, until: Deadline) -> None:
        draft.set(name_srv=await self._srv_decision(name, until))

    async def _srv_decision(self, host: str, until: Deadline) -> SrvDecision:
        fed, legacy = await _gather(
            self._lookup(SRV_FED_PREFIX + host, "SRV", until),
            self._lookup(SRV_LEGACY_PREFIX + host, "SRV", until),
        )
        return decide_srv(host, fed, legacy)

    async def _resolve_delegated(
        self, draft: _Draft, delegated: str, until: Deadline
    ) -> None:
        host, port = parse_and_validate_server_name(delegated)
        sni = bare_host(host)
        if is_ip_literal(host) or port is not None:
            draft.set(
                srv_not_used_because=f"the well-known delegates to the IP literal {delegated}"
                if is_ip_literal(host)
                else f"the well-known delegates to {delegated}, with an explicit port"
            )
            await self._resolve_direct(
                draft, host, port, host_header=delegated, sni=sni, until=until
            )
            return
        decision = await self._srv_decision(host, until)
        await self._resolve_with_srv(
            draft, host, decision, host_header=delegated, sni=sni, until=until
        )

    async def _resolve_direct(
        self,
        draft: _Draft,
        host: str,
        port: int | None,
        *,
        host_header: str,
        sni: str,
        until: Deadline,
    ) -> None:
        port = port or DEFAULT_FEDERATION_PORT
        bare = bare_host(host)
        if is_ip_literal(host):
            draft.set(literal_targets=(*draft.value.literal_targets, bare))
            _add_targets(
                draft,
                [bare],
                port,
                host_header=host_header,
                sni=sni,
                hostname=bare,
                source="ip literal",
            )
            return
        addresses = await self._host_addresses(host, until)
        draft.add_host(addresses)
        _add_targets(
            draft,
            addresses.addresses,
            port,
            host_header=host_header,
            sni=sni,
            hostname=host,
            source="explicit port",
        )

    async def _resolve_with_srv(
        self,
        draft: _Draft,
        host: str,
        decision: SrvDecision,
        *,
        host_header: str,
        sni: str,
        until: Deadline,
    ) -> None:
        draft.set(srv=decision)
        if decision.kind in (SrvKind.FAILED, SrvKind.UNAVAILABLE):
            return  # Synapse gives up here: no targets.
        if decision.kind == SrvKind.NONE:
            addresses = await self._host_addresses(host, until)
            draft.add_host(addresses)
            _add_targets(
                draft,
                addresses.addresses,
                DEFAULT_FEDERATION_PORT,
                host_header=host_header,
                sni=sni,
                hostname=host,
                source=f"A/AAAA {host}, port {DEFAULT_FEDERATION_PORT}",
            )
            return
        prefix = SRV_FED_PREFIX if decision.kind == SrvKind.FED else SRV_LEGACY_PREFIX
        target_hosts = list(dict.fromkeys(r.target for r in decision.records))[
            :MAX_SRV_HOSTS
        ]
        resolved = await _gather(
            *(self._host_addresses(h, until) for h in target_hosts)
        )
        by_host = dict(zip(target_hosts, resolved, strict=True))
        draft.set(hosts=(*draft.value.hosts, *resolved))
        for record in decision.records:
            found = by_host.get(record.target)
            if found is not None:
                _add_targets(
                    draft,
                    found.addresses,
                    record.port,
                    host_header=host_header,
                    sni=sni,
                    hostname=record.target,
                    source=f"SRV {prefix}{host}",
                )

    # -- bounded I/O -------------------------------------------------------------

    async def _lookup(self, qname: str, rdtype: str, until: Deadline) -> DnsResult:
        def failed(failure: BoundFailure) -> DnsResult:
            timed_out = failure.kind == "timeout"
            return DnsResult(
                qname=qname,
                rdtype=rdtype,
                outcome=DnsOutcome.TIMEOUT if timed_out else DnsOutcome.ERROR,
                error="timed out" if timed_out else "unexpected error",
            )

        return await until.bound(
            lambda: self._dns.lookup(qname, rdtype, until.remaining_s()),
            failed,
            what="a DNS lookup",
        )

    async def _host_addresses(self, host: str, until: Deadline) -> HostAddresses:
        a, aaaa = await _gather(
            self._lookup(host, "A", until), self._lookup(host, "AAAA", until)
        )
        return HostAddresses(host=host, a=a, aaaa=aaaa)

    async def _get(self, url: str, until: Deadline, **kwargs: Any) -> HttpResult:
        return await bounded_get(self._http, url, until, **kwargs)


async def bounded_get(
    http: HttpFetcher, url: str, until: Deadline, **kwargs: Any
) -> HttpResult:
    """`http.get` cut at `until`: a timeout or a bug is an error `HttpResult`."""

    def failed(failure: BoundFailure) -> HttpResult:
        return failed_get(
            url, kwargs.get("host_header") or "", kwargs.get("sni") or "", failure
        )

    return await until.bound(
        lambda: http.get(url, timeout=until.remaining_s(), **kwargs),
        failed,
        what="an HTTP request",
    )


def failed_get(
    url: str, host_header: str, sni: str, failure: BoundFailure
) -> HttpResult:
    """The `HttpResult` of a request cut short by its deadline (or a bug)."""
    timed_out = failure.kind == "timeout"
    return HttpResult(
        url=url,
        host_header=host_header,
        sni=sni,
        error=ProbeError.TIMEOUT if timed_out else ProbeError.ERROR,
        error_message="timed out" if timed_out else "unexpected error",
    )


def _add_targets(
    draft: _Draft,
    ips: Sequence[str],
    port: int,
    *,
    host_header: str,
    sni: str,
    hostname: str,
    source: str,
) -> None:
    for ip in ips:
        if classify_address(ip) is AddressClass.FORBIDDEN:
            continue  # never connected to; discovery.addresses fails them
        target = Target(
            ip=ip,
            port=port,
            host_header=host_header,
            sni=sni,
            hostname=hostname,
            source=source,
        )
        targets = draft.value.targets
        if any(t.address == target.address for t in targets):
            continue
        if len(targets) >= MAX_TARGETS:
            draft.set(targets_truncated=True)
            return
        draft.set(targets=(*targets, target))


def _no_well_known_address(url: str, name: str, addresses: HostAddresses) -> HttpResult:
    """The well-known fetch that could not start: no address to connect to."""
    lookups = (addresses.a, addresses.aaaa)
    if not addresses.addresses and any(
        r.outcome is DnsOutcome.TIMEOUT for r in lookups
    ):
        return HttpResult(
            url=url,
            host_header=name,
            sni=name,
            error=ProbeError.TIMEOUT,
            error_message=f"the A/AAAA lookup of {name} timed out",
        )
    reason = "; ".join(f"{r.rdtype}: {r.describe()}" for r in lookups)
    if addresses.addresses:
        reason = "only addresses we never connect to: " + ", ".join(addresses.addresses)
    return HttpResult(
        url=url,
        host_header=name,
        sni=name,
        error=ProbeError.NO_ADDRESS,
        error_message=f"{name} has no usable address ({reason})",
    )


async def _gather(*awaitables: Any) -> list[Any]:
    """Run coroutines concurrently; each is bounded and never raises."""
    return list(
        await defer.gatherResults([spawn(a) for a in awaitables], consumeErrors=True)
    )
