"""The network-check engine: server discovery and per-address probes.

`NetworkChecker.run()` first *observes* (DNS, HTTPS, TLS; concurrently, each
probe bounded by what is left of the run's budget) and then *judges*: the
check results are built from whatever observations exist when the run ends.
An observation that never arrived becomes a `fail` with reason `timeout`, so
a run always finishes within `timeout_s`, even when every probe hangs.

This module and everything it imports must not import Synapse: the command
line uses it without Synapse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import attr
from twisted.internet import defer
from twisted.python.threadpool import ThreadPool

from synapse_fedhealth.checks import connection, discovery, federation
from synapse_fedhealth.checks.discovery import (
    DEFAULT_FEDERATION_PORT,
    SRV_FED_PREFIX,
    SRV_LEGACY_PREFIX,
    HostAddresses,
    SrvDecision,
    Target,
    WellKnownOutcome,
)
from synapse_fedhealth.checks.federation import ServedKeys
from synapse_fedhealth.net.addresses import (
    AddressClass,
    classify_address,
    format_address,
    is_ip_literal,
)
from synapse_fedhealth.net.dns import (
    DnsOutcome,
    DnsResolver,
    DnsResult,
    ThreadedDnsResolver,
)
from synapse_fedhealth.net.http import (
    ERR_ERROR,
    ERR_TIMEOUT,
    WELL_KNOWN_MAX_SIZE,
    HttpFetcher,
    HttpResult,
    ProbeHttpClient,
)
from synapse_fedhealth.net.tls import (
    ConnectOutcome,
    TlsProber,
    TlsProbeResult,
    TrustStore,
    TwistedTlsProber,
    cert_summary,
)
from synapse_fedhealth.report import CheckResult, Status, fail

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Limits against hostile DNS: at most this many addresses/hosts are probed.
MAX_TARGETS = 16
MAX_SRV_HOSTS = 8
MAX_WELL_KNOWN_ADDRESSES = 8
# Share of the budget discovery may use before probes must start.
WELL_KNOWN_BUDGET_SHARE = 0.45
DISCOVERY_BUDGET_SHARE = 0.65
# Kept back at the end to build the report.
FINAL_MARGIN_S = 0.05

NETWORK_CHECK_IDS = (
    discovery.WELL_KNOWN,
    discovery.WELL_KNOWN_CONSISTENCY,
    discovery.SRV,
    discovery.ADDRESSES,
    discovery.TARGETS,
    connection.REACHABLE,
    connection.TLS_HANDSHAKE,
    connection.TLS_CERTIFICATE,
    federation.VERSION,
    federation.KEYS,
)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class NetworkSettings:
    server_name: str
    timeout_s: float  # wall-clock budget of the whole run
    cert_expiry_warning_days: int
    ca_files: tuple[str, ...] = ()  # empty -> system trust store
    dns_servers: tuple[str, ...] = ()  # empty -> /etc/resolv.conf nameservers
    user_agent: str = "Synapse/unknown"


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class NetworkFindings:
    checks: tuple[CheckResult, ...]
    # matrix-federation-tester /api/report field names.
    federation_tester: dict[str, Any]
    targets: tuple[Target, ...]
    # address ("ip:port") -> the parsed /_matrix/key/v2/server answer there.
    served_keys: Mapping[str, ServedKeys]
    cert_expiry: dict[str, float]  # certificate name -> earliest notAfter (epoch s)

    @property
    def federation_ok(self) -> bool:
        return not any(c.status is Status.FAIL for c in self.checks)


@attr.s(slots=True, auto_attribs=True)
class _Observations:
    """Everything seen so far. Judging reads only this."""

    host: str = ""
    port: int | None = None
    literal: bool = False
    invalid_name: str = ""
    # Well-known of the server name.
    wk_consulted: bool = False
    wk_addresses: HostAddresses | None = None
    wk_per_address: list[tuple[str, HttpResult]] | None = None
    wk_main: HttpResult | None = None
    # SRV of the server name (looked up early; relevant unless delegated).
    name_srv: tuple[DnsResult, DnsResult] | None = None
    # Resolution of the host peers connect to.
    delegated: str | None = None
    resolution_done: bool = False
    srv: SrvDecision | None = None
    srv_not_used_because: str = ""
    hosts: list[HostAddresses] = attr.ib(factory=list)
    literal_targets: list[str] = attr.ib(factory=list)
    targets: list[Target] = attr.ib(factory=list)
    targets_truncated: bool = False
    tls: dict[str, TlsProbeResult] = attr.ib(factory=dict)
    version: dict[str, HttpResult] = attr.ib(factory=dict)
    keys: dict[str, HttpResult] = attr.ib(factory=dict)
    engine_error: str = ""


class NetworkChecker:
    def __init__(
        self,
        reactor: Any,
        settings: NetworkSettings,
        threadpool: ThreadPool | None,
        *,
        resolver: DnsResolver | None = None,
        http: HttpFetcher | None = None,
        tls_prober: TlsProber | None = None,
        trust: TrustStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self._wall_clock = wall_clock
        self._trust_error = ""
        if trust is None:
            try:
                trust = TrustStore(settings.ca_files)
            except (OSError, ValueError) as e:
                # A bad CA file is a config problem (linted elsewhere); judge
                # with the system store rather than not at all.
                self._trust_error = (
                    f"could not load {', '.join(settings.ca_files)}: {e}"
                )
                trust = TrustStore(())
        self._trust = trust
        if resolver is None:
            if threadpool is None:
                raise ValueError("a threadpool is needed for the default DNS resolver")
            resolver = ThreadedDnsResolver(reactor, threadpool, settings.dns_servers)
        self._resolver = resolver
        self._http = http or ProbeHttpClient(
            reactor, resolver, trust, user_agent=settings.user_agent
        )
        self._tls = tls_prober or TwistedTlsProber(reactor)
        self._deadline = 0.0

    # ------------------------------------------------------------------
    # Running

    async def run(self) -> NetworkFindings:
        timeout = max(0.0, self._settings.timeout_s - FINAL_MARGIN_S)
        self._deadline = self._reactor.seconds() + timeout
        obs = _Observations()
        observing = defer.Deferred.fromCoroutine(self._observe(obs))
        # Backstop: every probe is bounded already, but nothing may outlive the budget.
        observing.addTimeout(timeout + FINAL_MARGIN_S / 2, self._reactor)
        try:
            await observing
        except defer.TimeoutError:
            pass
        except Exception as e:
            # One line, no traceback: Synapse's log is the admin's, not ours.
            logger.warning(
                "network checks: unexpected error while probing: %s: %s",
                type(e).__name__,
                e,
            )
            obs.engine_error = f"{type(e).__name__}: {e}"
        try:
            return self._judge(obs)
        except Exception as e:  # a bug must not take the report down
            logger.warning(
                "network checks: unexpected error while judging: %s: %s",
                type(e).__name__,
                e,
            )
            return NetworkFindings(
                checks=(
                    fail(
                        discovery.TARGETS,
                        f"the network checks failed unexpectedly: {type(e).__name__}: {e}",
                        fix="This is a bug in synapse-fedhealth; please report it with the log.",
                        details={"reason": "error"},
                    ),
                ),
                federation_tester={},
                targets=(),
                served_keys={},
                cert_expiry={},
            )

    def _remaining(self, until: float | None = None) -> float:
        end = self._deadline if until is None else min(until, self._deadline)
        return max(0.0, end - float(self._reactor.seconds()))

    async def _bounded(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        until: float,
        on_fail: Callable[[str], T],
    ) -> T:
        """Await `make()` until `until`; a timeout or a bug becomes `on_fail(kind)`."""
        try:
            d: defer.Deferred[T] = defer.Deferred.fromCoroutine(make())
        except Exception as e:
            logger.warning(
                "network checks: probe failed to start: %s: %s", type(e).__name__, e
            )
            return on_fail(ERR_ERROR)
        d.addTimeout(self._remaining(until), self._reactor)
        try:
            result: T = await d
        except defer.TimeoutError:
            return on_fail(ERR_TIMEOUT)
        except Exception as e:
            logger.warning(
                "network checks: unexpected probe error: %s: %s", type(e).__name__, e
            )
            return on_fail(ERR_ERROR)
        return result

    async def _lookup(self, qname: str, rdtype: str, until: float) -> DnsResult:
        def _failed(kind: str) -> DnsResult:
            outcome = DnsOutcome.TIMEOUT if kind == ERR_TIMEOUT else DnsOutcome.ERROR
            return DnsResult(
                qname=qname,
                rdtype=rdtype,
                outcome=outcome,
                error="timed out" if kind == ERR_TIMEOUT else "unexpected error",
            )

        async def _go() -> DnsResult:
            return await self._resolver.lookup(qname, rdtype, self._remaining(until))

        return await self._bounded(_go, until, _failed)

    async def _host_addresses(self, host: str, until: float) -> HostAddresses:
        a, aaaa = await defer.gatherResults(
            [
                defer.ensureDeferred(self._lookup(host, "A", until)),
                defer.ensureDeferred(self._lookup(host, "AAAA", until)),
            ]
        )
        return HostAddresses(host=host, a=a, aaaa=aaaa)

    async def _get(self, url: str, until: float, **kwargs: Any) -> HttpResult:
        host_header = kwargs.get("host_header") or ""
        sni = kwargs.get("sni") or ""

        def _failed(kind: str) -> HttpResult:
            message = "timed out" if kind == ERR_TIMEOUT else "unexpected error"
            return HttpResult(
                url=url,
                host_header=host_header,
                sni=sni,
                error=kind,
                error_message=message,
            )

        async def _go() -> HttpResult:
            return await self._http.get(url, timeout=self._remaining(until), **kwargs)

        return await self._bounded(_go, until, _failed)

    async def _observe(self, obs: _Observations) -> None:
        name = self._settings.server_name
        start = self._reactor.seconds()
        budget = self._deadline - start
        wk_until = start + budget * WELL_KNOWN_BUDGET_SHARE
        discovery_until = start + budget * DISCOVERY_BUDGET_SHARE
        try:
            host, port = discovery.parse_and_validate_server_name(name)
        except ValueError as e:
            obs.invalid_name = str(e)
            obs.resolution_done = True
            return
        obs.host, obs.port = host, port
        obs.literal = is_ip_literal(host)

        # Phase 1: well-known and the server name's own DNS, concurrently.
        if obs.literal or port is not None:
            obs.srv_not_used_because = (
                f"{name} is an IP literal"
                if obs.literal
                else f"{name} has an explicit port"
            )
            await self._resolve_direct(
                obs,
                host,
                port,
                host_header=name,
                sni=discovery.bare_host(host),
                until=discovery_until,
            )
        else:
            obs.wk_consulted = True
            await defer.gatherResults(
                [
                    defer.ensureDeferred(self._fetch_well_known(obs, name, wk_until)),
                    defer.ensureDeferred(self._lookup_name_srv(obs, name, wk_until)),
                ]
            )
            # Phase 2: resolve what peers will connect to.
            outcome = (
                discovery.interpret_well_known(obs.wk_main)
                if obs.wk_main is not None
                else None
            )
            if outcome is not None and outcome.delegated is not None:
                obs.delegated = outcome.delegated
                await self._resolve_delegated(obs, outcome.delegated, discovery_until)
            else:
                assert obs.name_srv is not None
                decision = discovery.decide_srv(name, obs.name_srv[0], obs.name_srv[1])
                await self._resolve_with_srv(
                    obs,
                    name,
                    decision,
                    host_header=name,
                    sni=name,
                    until=discovery_until,
                )
        obs.resolution_done = True

        # Phase 3: probe every target.
        await defer.gatherResults(
            [defer.ensureDeferred(self._probe_target(obs, t)) for t in obs.targets]
        )

    async def _fetch_well_known(
        self, obs: _Observations, name: str, until: float
    ) -> None:
        addresses = await self._host_addresses(name, until)
        obs.wk_addresses = addresses
        url = f"https://{name}/.well-known/matrix/server"
        usable = [
            a
            for a in addresses.addresses
            if classify_address(a) is not AddressClass.FORBIDDEN
        ][:MAX_WELL_KNOWN_ADDRESSES]
        if not usable:
            reason = "; ".join(
                f"{r.rdtype}: {r.describe()}" for r in (addresses.a, addresses.aaaa)
            )
            if addresses.addresses:
                reason = "only addresses we never connect to: " + ", ".join(
                    addresses.addresses
                )
            obs.wk_per_address = []
            timed_out = any(
                r.outcome is DnsOutcome.TIMEOUT for r in (addresses.a, addresses.aaaa)
            )
            if timed_out and not addresses.addresses:
                obs.wk_main = HttpResult(
                    url=url,
                    host_header=name,
                    sni=name,
                    error=ERR_TIMEOUT,
                    error_message=f"the A/AAAA lookup of {name} timed out",
                )
                return
            obs.wk_main = HttpResult(
                url=url,
                host_header=name,
                sni=name,
                error="no_address",
                error_message=f"{name} has no usable address ({reason})",
            )
            return
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    self._get(
                        url,
                        until,
                        connect_to=(ip, 443),
                        host_header=name,
                        sni=name,
                        max_bytes=WELL_KNOWN_MAX_SIZE,
                        follow_redirects=True,
                        verify_tls=True,
                    )
                )
                for ip in usable
            ]
        )
        obs.wk_per_address = [
            (format_address(ip, 443), r) for ip, r in zip(usable, results, strict=True)
        ]
        # A peer uses whichever address connects first.
        connected = [r for r in results if r.error not in ("refused", "unreachable")]
        obs.wk_main = connected[0] if connected else results[0]

    async def _lookup_name_srv(
        self, obs: _Observations, name: str, until: float
    ) -> None:
        fed, legacy = await defer.gatherResults(
            [
                defer.ensureDeferred(self._lookup(SRV_FED_PREFIX + name, "SRV", until)),
                defer.ensureDeferred(
                    self._lookup(SRV_LEGACY_PREFIX + name, "SRV", until)
                ),
            ]
        )
        obs.name_srv = (fed, legacy)

    async def _resolve_delegated(
        self, obs: _Observations, delegated: str, until: float
    ) -> None:
        host, port = discovery.parse_and_validate_server_name(delegated)
        sni = discovery.bare_host(host)
        if is_ip_literal(host):
            obs.srv_not_used_because = (
                f"the well-known delegates to the IP literal {delegated}"
            )
            await self._resolve_direct(
                obs, host, port, host_header=delegated, sni=sni, until=until
            )
            return
        if port is not None:
            obs.srv_not_used_because = (
                f"the well-known delegates to {delegated}, with an explicit port"
            )
            await self._resolve_direct(
                obs, host, port, host_header=delegated, sni=sni, until=until
            )
            return
        fed, legacy = await defer.gatherResults(
            [
                defer.ensureDeferred(self._lookup(SRV_FED_PREFIX + host, "SRV", until)),
                defer.ensureDeferred(
                    self._lookup(SRV_LEGACY_PREFIX + host, "SRV", until)
                ),
            ]
        )
        decision = discovery.decide_srv(host, fed, legacy)
        await self._resolve_with_srv(
            obs, host, decision, host_header=delegated, sni=sni, until=until
        )

    async def _resolve_direct(
        self,
        obs: _Observations,
        host: str,
        port: int | None,
        *,
        host_header: str,
        sni: str,
        until: float,
    ) -> None:
        port = port or DEFAULT_FEDERATION_PORT
        bare = discovery.bare_host(host)
        if is_ip_literal(host):
            obs.literal_targets.append(bare)
            self._add_targets(
                obs,
                [bare],
                port,
                host_header=host_header,
                sni=sni,
                hostname=bare,
                source="ip literal",
            )
            return
        addresses = await self._host_addresses(host, until)
        obs.hosts.append(addresses)
        self._add_targets(
            obs,
            addresses.addresses,
            port,
            host_header=host_header,
            sni=sni,
            hostname=host,
            source="explicit port",
        )

    async def _resolve_with_srv(
        self,
        obs: _Observations,
        host: str,
        decision: SrvDecision,
        *,
        host_header: str,
        sni: str,
        until: float,
    ) -> None:
        obs.srv = decision
        if decision.kind in ("failed", "unavailable"):
            return  # Synapse gives up here: no targets.
        if decision.kind == "none":
            addresses = await self._host_addresses(host, until)
            obs.hosts.append(addresses)
            self._add_targets(
                obs,
                addresses.addresses,
                DEFAULT_FEDERATION_PORT,
                host_header=host_header,
                sni=sni,
                hostname=host,
                source=f"A/AAAA {host}, port 8448",
            )
            return
        prefix = SRV_FED_PREFIX if decision.kind == "fed" else SRV_LEGACY_PREFIX
        target_hosts = list(dict.fromkeys(r.target for r in decision.records))[
            :MAX_SRV_HOSTS
        ]
        resolved = await defer.gatherResults(
            [defer.ensureDeferred(self._host_addresses(h, until)) for h in target_hosts]
        )
        by_host = dict(zip(target_hosts, resolved, strict=True))
        obs.hosts.extend(resolved)
        for record in decision.records:
            found = by_host.get(record.target)
            if found is None:
                continue
            self._add_targets(
                obs,
                found.addresses,
                record.port,
                host_header=host_header,
                sni=sni,
                hostname=record.target,
                source=f"SRV {prefix}{host}",
            )

    def _add_targets(
        self,
        obs: _Observations,
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
            if any(t.address == target.address for t in obs.targets):
                continue
            if len(obs.targets) >= MAX_TARGETS:
                obs.targets_truncated = True
                return
            obs.targets.append(target)

    async def _probe_target(self, obs: _Observations, target: Target) -> None:
        until = self._deadline

        async def _tls() -> None:
            def _failed(kind: str) -> TlsProbeResult:
                if kind == ERR_TIMEOUT:
                    return TlsProbeResult(
                        ip=target.ip,
                        port=target.port,
                        sni=target.sni,
                        connect=ConnectOutcome.TIMEOUT,
                        connect_error="timed out",
                    )
                return TlsProbeResult(
                    ip=target.ip,
                    port=target.port,
                    sni=target.sni,
                    connect=ConnectOutcome.ERROR,
                    connect_error="unexpected error",
                )

            async def _go() -> TlsProbeResult:
                return await self._tls.probe(
                    target.ip, target.port, target.sni, self._remaining(until)
                )

            obs.tls[target.address] = await self._bounded(_go, until, _failed)

        async def _endpoint(path: str, into: dict[str, HttpResult]) -> None:
            into[target.address] = await self._get(
                federation.endpoint_url(target, path),
                until,
                connect_to=(target.ip, target.port),
                host_header=target.host_header,
                sni=target.sni,
                # The chain is judged by tls.certificate; here we want to
                # see what answers behind it, as a peer would if it trusted it.
                verify_tls=False,
            )

        await defer.gatherResults(
            [
                defer.ensureDeferred(_tls()),
                defer.ensureDeferred(_endpoint(federation.VERSION_PATH, obs.version)),
                defer.ensureDeferred(_endpoint(federation.KEYS_PATH, obs.keys)),
            ]
        )

    # ------------------------------------------------------------------
    # Judging

    def _judge(self, obs: _Observations) -> NetworkFindings:
        name = self._settings.server_name
        if obs.invalid_name:
            check = fail(
                discovery.TARGETS,
                f"{name!r} is not a valid server name: {obs.invalid_name}",
                fix="Set `server_name` to a host name (optionally with :port) as the Matrix spec's grammar allows.",
                details={"reason": "invalid_server_name"},
            )
            return NetworkFindings(
                checks=(check,),
                federation_tester={"FederationOK": False},
                targets=(),
                served_keys={},
                cert_expiry={},
            )

        now = self._wall_clock()
        checks: list[CheckResult] = []
        per_target: list[CheckResult] = []
        served: dict[str, ServedKeys] = {}
        cert_expiry: dict[str, float] = {}
        versions: dict[str, dict[str, str]] = {}
        verifications: dict[str, Any] = {}

        for target in obs.targets:
            probe = obs.tls.get(target.address)
            if probe is None:
                probe = TlsProbeResult(
                    ip=target.ip,
                    port=target.port,
                    sni=target.sni,
                    connect=ConnectOutcome.TIMEOUT,
                    connect_error="timed out",
                )
                obs.tls[target.address] = probe
        any_reachable = any(p.connect == ConnectOutcome.OK for p in obs.tls.values())

        for target in obs.targets:
            probe = obs.tls[target.address]
            per_target.append(
                connection.check_reachable(target, probe, any_reachable=any_reachable)
            )
            per_target.append(connection.check_handshake(target, probe))
            cert_check, verification = connection.check_certificate(
                target,
                probe,
                self._trust,
                warning_days=self._settings.cert_expiry_warning_days,
                now=now,
            )
            if self._trust_error:
                cert_check = attr.evolve(
                    cert_check,
                    details={
                        **cert_check.details,
                        "trust_store_error": self._trust_error,
                    },
                )
            per_target.append(cert_check)
            if verification is not None:
                verifications[target.address] = verification
                previous = cert_expiry.get(target.sni)
                cert_expiry[target.sni] = (
                    min(previous, verification.not_after)
                    if previous
                    else verification.not_after
                )

            version_http = obs.version.get(target.address)
            keys_http = obs.keys.get(target.address)
            if (
                any_reachable
                and probe.connect != ConnectOutcome.OK
                and all(
                    r is None or r.error is not None for r in (version_http, keys_http)
                )
            ):
                # A dead address next to working ones (e.g. a stale AAAA):
                # connection.reachable warns; the requests there can't fail.
                per_target.append(
                    connection.skip_unreachable(federation.VERSION, target)
                )
                per_target.append(connection.skip_unreachable(federation.KEYS, target))
                continue
            if version_http is None:
                per_target.append(
                    connection.timed_out(
                        federation.VERSION, target, "GET " + federation.VERSION_PATH
                    )
                )
            else:
                version_check, version = federation.check_version(target, version_http)
                per_target.append(version_check)
                if version is not None:
                    versions[target.address] = version
            if keys_http is None:
                per_target.append(
                    connection.timed_out(
                        federation.KEYS, target, "GET " + federation.KEYS_PATH
                    )
                )
            else:
                keys_check, keys = federation.check_keys(
                    target, keys_http, name, now_ms=int(now * 1000)
                )
                per_target.append(keys_check)
                if keys is not None:
                    served[target.address] = keys

        fallback_works = bool(versions) and obs.delegated is None
        checks.extend(self._judge_discovery(obs, fallback_works=fallback_works))
        checks.extend(per_target)
        if (
            obs.wk_main is not None
            and obs.wk_main.cert_not_after is not None
            and obs.wk_main.error is None
        ):
            previous = cert_expiry.get(name)
            cert_expiry[name] = (
                min(previous, obs.wk_main.cert_not_after)
                if previous
                else obs.wk_main.cert_not_after
            )
        if obs.engine_error:
            checks.append(
                fail(
                    discovery.TARGETS,
                    f"the network checks stopped on an unexpected error: {obs.engine_error}",
                    fix="This is a bug in synapse-fedhealth; please report it with the log.",
                    details={"reason": "error"},
                )
            )

        findings_ok = not any(c.status is Status.FAIL for c in checks)
        tester = self._federation_tester(
            obs, served, versions, verifications, findings_ok, now
        )
        return NetworkFindings(
            checks=tuple(checks),
            federation_tester=tester,
            targets=tuple(obs.targets),
            served_keys=served,
            cert_expiry=cert_expiry,
        )

    def _judge_discovery(
        self, obs: _Observations, *, fallback_works: bool
    ) -> list[CheckResult]:
        name = self._settings.server_name
        out: list[CheckResult] = []
        not_consulted = obs.srv_not_used_because if not obs.wk_consulted else ""
        # discovery.well_known and its consistency
        if not obs.wk_consulted:
            main = WellKnownOutcome(kind=discovery.WK_NOT_CONSULTED)
            out.append(
                discovery.check_well_known(
                    name,
                    main,
                    fallback_works=fallback_works,
                    not_consulted_because=not_consulted,
                )
            )
            out.append(
                discovery.check_well_known_consistency(
                    name, main, [], not_consulted_because=not_consulted
                )
            )
        else:
            wk_http = obs.wk_main or HttpResult(
                url=f"https://{name}/.well-known/matrix/server",
                host_header=name,
                sni=name,
                error=ERR_TIMEOUT,
                error_message="timed out",
            )
            main = discovery.interpret_well_known(wk_http)
            out.append(
                discovery.check_well_known(name, main, fallback_works=fallback_works)
            )
            if obs.wk_per_address is None:
                out.append(
                    _timeout(
                        discovery.WELL_KNOWN_CONSISTENCY,
                        f"fetching the well-known from each address of {name}",
                        name,
                    )
                )
            else:
                per_address = [
                    (addr, discovery.interpret_well_known(r))
                    for addr, r in obs.wk_per_address
                ]
                out.append(
                    discovery.check_well_known_consistency(name, main, per_address)
                )

        # discovery.srv
        ignored = None
        if obs.delegated is not None and obs.name_srv is not None:
            ignored = discovery.decide_srv(name, obs.name_srv[0], obs.name_srv[1])
        if obs.srv is not None:
            cname_targets = [
                (alias, t)
                for h in obs.hosts
                for alias, t in h.cnames
                if any(r.target == h.host for r in obs.srv.records) and alias == h.host
            ]
            out.append(
                discovery.check_srv(
                    obs.srv, cname_targets=cname_targets, ignored=ignored
                )
            )
        elif obs.srv_not_used_because:
            out.append(
                discovery.check_srv(
                    None, not_used_because=obs.srv_not_used_because, ignored=ignored
                )
            )
        elif obs.wk_consulted and obs.name_srv is None:
            out.append(_timeout(discovery.SRV, f"the SRV lookup for {name}", name))
        else:
            out.append(_timeout(discovery.SRV, "the SRV lookup", name))

        # discovery.addresses
        if obs.srv is not None and obs.srv.kind in ("failed", "unavailable"):
            out.append(
                fail(
                    discovery.ADDRESSES,
                    "no address: the SRV lookup stopped resolution (see discovery.srv)",
                    fix="Fix the SRV problem reported by discovery.srv.",
                    details={"reason": "srv_failed"},
                )
            )
        elif not obs.resolution_done and not obs.hosts and not obs.literal_targets:
            out.append(
                _timeout(
                    discovery.ADDRESSES,
                    "resolving the federation host's addresses",
                    name,
                )
            )
        else:
            out.append(
                discovery.check_addresses(
                    obs.hosts, literal_targets=obs.literal_targets
                )
            )

        out.append(
            discovery.check_targets(obs.targets, truncated=obs.targets_truncated)
        )
        return out

    def _federation_tester(
        self,
        obs: _Observations,
        served: Mapping[str, ServedKeys],
        versions: Mapping[str, Mapping[str, str]],
        verifications: Mapping[str, Any],
        federation_ok: bool,
        now: float,
    ) -> dict[str, Any]:
        name = self._settings.server_name
        wk: dict[str, Any] = {"m.server": obs.delegated or ""}
        if obs.wk_main is not None:
            outcome = discovery.interpret_well_known(obs.wk_main)
            if outcome.kind != discovery.WK_DELEGATED:
                wk["result"] = outcome.describe()
            if outcome.cache_lifetime_s is not None:
                wk["CacheExpiresAt"] = int(now + outcome.cache_lifetime_s)
        elif not obs.wk_consulted:
            wk["result"] = "not consulted: " + obs.srv_not_used_because

        dns_result: dict[str, Any] = {
            "SRVSkipped": obs.srv is None,
            "SRVCName": "",
            "SRVRecords": [],
            "SRVError": None,
        }
        if obs.srv is not None:
            dns_result["SRVCName"] = (
                (SRV_FED_PREFIX if obs.srv.kind != "legacy" else SRV_LEGACY_PREFIX)
                + obs.srv.name
                + "."
            )
            dns_result["SRVRecords"] = [
                {
                    "Target": r.target + ".",
                    "Port": r.port,
                    "Priority": r.priority,
                    "Weight": r.weight,
                }
                for r in obs.srv.records
            ]
            if obs.srv.failed is not None:
                dns_result["SRVError"] = {"Message": obs.srv.failed.describe()}
        hosts: dict[str, Any] = {}
        for h in obs.hosts:
            lookup_errors = [
                f"{r.rdtype}: {r.describe()}"
                for r in (h.a, h.aaaa)
                if r.outcome not in (DnsOutcome.ANSWER, DnsOutcome.NO_ANSWER)
            ]
            canonical = h.cnames[-1][1] if h.cnames else h.host
            hosts[h.host] = {
                "CName": canonical + ".",
                "Addrs": list(h.addresses),
                "Error": {"Message": "; ".join(lookup_errors)}
                if lookup_errors
                else None,
            }
        dns_result["Hosts"] = hosts
        dns_result["Addrs"] = [t.address for t in obs.targets]

        reports: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for target in obs.targets:
            probe = obs.tls.get(target.address)
            keys = served.get(target.address)
            if (
                probe is None
                or probe.connect != ConnectOutcome.OK
                or probe.handshake != "ok"
            ):
                message = "timed out"
                if probe is not None:
                    message = probe.connect_error or probe.handshake_error or "failed"
                errors[target.address] = {"Message": message}
                continue
            verification = verifications.get(target.address)
            checks: dict[str, Any] = {}
            if keys is not None:
                checks = keys.federation_tester_checks(name, int(now * 1000))
            else:
                checks = {
                    "AllChecksOK": False,
                    "MatchingServerName": False,
                    "FutureValidUntilTS": False,
                    "HasEd25519Key": False,
                    "AllEd25519ChecksOK": False,
                    "Ed25519Checks": {},
                }
            valid_certs = verification is not None and verification.valid
            checks["ValidCertificates"] = valid_certs
            checks["AllChecksOK"] = bool(checks["AllChecksOK"]) and valid_certs
            report_errors: list[dict[str, str]] = []
            if verification is not None and not verification.valid:
                report_errors.extend({"Message": p} for p in verification.problems)
            reports[target.address] = {
                "Certificates": [cert_summary(c) for c in probe.chain],
                "Cipher": {
                    "Version": _tester_version(probe.protocol),
                    "CipherSuite": probe.cipher or "",
                },
                "Checks": checks,
                "Errors": report_errors,
                "Ed25519VerifyKeys": dict(keys.ed25519_keys)
                if keys is not None
                else None,
                "Info": {},
                "Keys": dict(keys.raw) if keys is not None else None,
            }
        version: dict[str, Any] = {}
        if versions:
            version = dict(next(iter(versions.values())))
        else:
            first_error = next(
                (r.error_message or r.error for r in obs.version.values() if r.error),
                None,
            )
            first_status = next(
                (r.status for r in obs.version.values() if r.status is not None), None
            )
            version = {
                "error": first_error
                or (f"HTTP {first_status}" if first_status else "no answer")
            }
        return {
            "WellKnownResult": wk,
            "DNSResult": dns_result,
            "ConnectionReports": reports,
            "ConnectionErrors": errors,
            "Version": version,
            "FederationOK": federation_ok,
        }


def _tester_version(protocol: str | None) -> str:
    if not protocol:
        return ""
    return protocol.replace("TLSv", "TLS ")


def _timeout(check_id: str, what: str, name: str) -> CheckResult:
    return fail(
        check_id,
        f"{what} timed out before the run's deadline",
        fix=f"Check that the DNS servers used here answer for {name} promptly, or raise the module's `timeout`.",
        details={"reason": "timeout"},
    )


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and p.isascii() for p in parts)
