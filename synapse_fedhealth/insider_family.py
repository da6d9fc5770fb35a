"""Async wiring of the insider checks (SPEC 4.4 key_matches_local,
signed_request, notary; 4.5 proxy.forwarded_headers, client.well_known).

The judging is pure (synapse_fedhealth/checks/); this module only sends the
requests, with the engine's HTTP client and resolution, under the run's
deadline. Nothing here imports Synapse.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attr
from twisted.internet import defer

from synapse_fedhealth.checks.client_wellknown import (
    CLIENT_WELL_KNOWN,
    CLIENT_WELL_KNOWN_PATH,
    judge_client_well_known,
    judge_client_well_known_error,
)
from synapse_fedhealth.checks.forwarded import (
    ECHO_PATH,
    FORWARDED_HEADERS,
    judge_forwarded_headers,
    judge_forwarded_headers_error,
)
from synapse_fedhealth.checks.keys_local import (
    KEY_MATCHES_LOCAL,
    judge_key_matches_local,
)
from synapse_fedhealth.checks.notary import (
    NOTARY,
    NOTARY_QUERY_PATH,
    build_notary_query,
    judge_notary_answer,
    judge_notary_error,
    notary_minimum_valid_until_ts,
    plan_notary_checks,
)
from synapse_fedhealth.checks.signed_request import (
    SIGNED_REQUEST,
    build_signed_request,
    judge_signed_request,
    judge_signed_request_error,
    signed_request_precheck,
)
from synapse_fedhealth.homeserver import HomeserverSnapshot, TrustedKeyServerInfo
from synapse_fedhealth.net.dns import DnsResolver, ThreadedDnsResolver
from synapse_fedhealth.net.http import HttpResult, ProbeHttpClient
from synapse_fedhealth.net.tls import TrustStore
from synapse_fedhealth.report import CheckResult, Status, skip
from synapse_fedhealth.runner import FamilyOutcome

# The share of the insider budget a notary may spend finding the notary
# itself (its well-known, SRV) before the query: the rest is for the query.
NOTARY_DISCOVERY_SHARE = 0.6
MAX_BODY = 256 * 1024  # notary answers carry a few keys; anything larger is hostile

OUTSIDE_CHECK_IDS = (FORWARDED_HEADERS, CLIENT_WELL_KNOWN)
TARGET_CHECK_IDS = (KEY_MATCHES_LOCAL, SIGNED_REQUEST)
NOTARY_CHECK_IDS = (NOTARY,)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class InsiderSettings:
    timeout_s: float
    notary_check: bool
    ca_files: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    user_agent: str = "Synapse/unknown"
    cert_expiry_warning_days: int = 14


def make_http(
    reactor: Any,
    settings: InsiderSettings,
    threadpool: Any,
    resolver: DnsResolver | None = None,
    trust: TrustStore | None = None,
) -> ProbeHttpClient:
    if trust is None:
        try:
            trust = TrustStore(settings.ca_files)
        except Exception:
            # The network family reports an unreadable CA file; here, fall
            # back to the system store rather than fail every insider check
            # twice.
            trust = TrustStore(())
    if resolver is None:
        resolver = ThreadedDnsResolver(reactor, threadpool, settings.dns_servers)
    return ProbeHttpClient(reactor, resolver, trust, user_agent=settings.user_agent)


def _error_kind(result: HttpResult) -> str:
    return result.error or "error"


class _BudgetedFamily:
    """Shared plumbing: the snapshot, settings, HTTP client, and the family's
    own deadline (`settings.timeout_s` from the start of `run()`)."""

    def __init__(
        self,
        reactor: Any,
        snapshot: HomeserverSnapshot,
        settings: InsiderSettings,
        http: ProbeHttpClient,
    ) -> None:
        self._reactor = reactor
        self._snapshot = snapshot
        self._settings = settings
        self._http = http
        self._deadline = 0.0

    def _start_clock(self) -> None:
        self._deadline = self._reactor.seconds() + self._settings.timeout_s

    def _remaining(self) -> float:
        now: float = self._reactor.seconds()
        return max(0.0, self._deadline - now)


class OutsideViewFamily(_BudgetedFamily):
    """Checks that need no resolved target of ours: the forwarded headers
    through the public client path, and the client well-known."""

    name = "insider"
    check_ids: Sequence[str] = OUTSIDE_CHECK_IDS

    def __init__(
        self,
        reactor: Any,
        snapshot: HomeserverSnapshot,
        settings: InsiderSettings,
        http: ProbeHttpClient,
        *,
        issue_nonce: Callable[[], str] | None,
    ) -> None:
        super().__init__(reactor, snapshot, settings, http)
        self._issue_nonce = issue_nonce

    async def run(self) -> FamilyOutcome:
        self._start_clock()
        groups: list[list[CheckResult]] = await defer.gatherResults(
            [
                defer.ensureDeferred(self._forwarded_headers()),
                defer.ensureDeferred(self._client_well_known()),
            ],
            consumeErrors=True,
        )
        return FamilyOutcome(checks=tuple(c for group in groups for c in group))

    # -- proxy.forwarded_headers -----------------------------------------------

    async def _forwarded_headers(self) -> list[CheckResult]:
        base = self._snapshot.public_baseurl
        if not base:
            return [
                skip(
                    FORWARDED_HEADERS,
                    "skipped: public_baseurl is not set, so there is no public client "
                    "path to send a request through",
                )
            ]
        if self._issue_nonce is None:
            return [
                skip(FORWARDED_HEADERS, "skipped: the echo resource is not mounted")
            ]
        parsed = urllib.parse.urlsplit(base)
        url = urllib.parse.urljoin(
            base, ECHO_PATH.lstrip("/") + "/" + self._issue_nonce()
        )
        result = await self._http.get(
            url, max_bytes=MAX_BODY, timeout=self._remaining(), verify_tls=False
        )
        request = result.request_details()
        if result.status is None:
            return [
                judge_forwarded_headers_error(
                    _error_kind(result), result.error_message, request=request
                )
            ]
        return [
            judge_forwarded_headers(
                result.status,
                result.headers,
                result.body,
                sent_host=parsed.netloc,
                sent_scheme=parsed.scheme or "https",
                listeners=self._snapshot.listeners,
                request=request,
            )
        ]

    # -- client.well_known -----------------------------------------------------

    async def _client_well_known(self) -> list[CheckResult]:
        name = self._snapshot.server_name
        url = f"https://{name}{CLIENT_WELL_KNOWN_PATH}"
        result = await self._http.get(
            url,
            max_bytes=MAX_BODY,
            timeout=self._remaining(),
            follow_redirects=True,
        )
        request = result.request_details()
        if result.status is None:
            return [
                judge_client_well_known_error(
                    _error_kind(result),
                    result.error_message,
                    server_name=name,
                    request=request,
                )
            ]
        return [
            judge_client_well_known(
                result.status,
                result.headers,
                result.body,
                public_baseurl=self._snapshot.public_baseurl,
                server_name=name,
                request=request,
            )
        ]


class TargetInsiderFamily:
    """Checks of our own public federation addresses, once resolved: is the
    served key ours, and does a request signed like a peer's pass?"""

    name = "insider (targets)"
    check_ids: Sequence[str] = TARGET_CHECK_IDS

    def __init__(
        self,
        reactor: Any,
        snapshot: HomeserverSnapshot,
        findings: Any,
        http: ProbeHttpClient,
        timeout_s: float,
    ) -> None:
        self._reactor = reactor
        self._snapshot = snapshot
        self._findings = findings
        self._http = http
        self._timeout_s = timeout_s

    async def run(self) -> FamilyOutcome:
        checks = self._key_matches_local()
        checks += await self._signed_requests()
        return FamilyOutcome(checks=tuple(checks))

    def _key_matches_local(self) -> list[CheckResult]:
        served: Mapping[str, Any] = self._findings.served_keys
        if not served:
            return [
                skip(
                    KEY_MATCHES_LOCAL,
                    "not run: no address served /_matrix/key/v2/server (see "
                    "federation.keys)",
                )
            ]
        by_address = {t.address: t for t in self._findings.targets}
        results = []
        for address, keys in served.items():
            target = by_address.get(address)
            request = {
                "url": f"https://{target.host_header if target else address}/_matrix/key/v2/server",
                "host_header": target.host_header if target else None,
                "sni": target.sni if target else None,
                "connected_to": address,
            }
            results.append(
                judge_key_matches_local(
                    keys.raw,
                    server_name=self._snapshot.server_name,
                    signing_keys=self._snapshot.signing_keys,
                    request=request,
                    target=address,
                )
            )
        return results

    async def _signed_requests(self) -> list[CheckResult]:
        precheck = signed_request_precheck(self._snapshot)
        if precheck is not None:
            return [precheck]
        targets = list(self._findings.targets)
        if not targets:
            return [
                skip(
                    SIGNED_REQUEST,
                    "not run: no target address to send it to (see discovery.addresses)",
                )
            ]
        # A dead address is connection.reachable's finding; peers move on to
        # the next one, and so does this probe.
        reachable = {
            c.target
            for c in self._findings.checks
            if c.id == "connection.reachable" and c.status is Status.OK
        }
        targets = [t for t in targets if t.address in reachable]
        if not targets:
            return [
                skip(
                    SIGNED_REQUEST,
                    "not run: no address is reachable (see connection.reachable)",
                )
            ]
        key = self._snapshot.signing_keys[0]
        signed = build_signed_request(key, self._snapshot.server_name)
        return list(
            await defer.gatherResults(
                [
                    defer.ensureDeferred(self._send(signed, t, key.key_id))
                    for t in targets
                ],
                consumeErrors=True,
            )
        )

    async def _send(self, signed: Any, target: Any, key_id: str) -> CheckResult:
        url = f"https://{target.host_header}{signed.path}"
        result = await self._http.get(
            url,
            connect_to=(target.ip, target.port),
            host_header=target.host_header,
            sni=target.sni,
            max_bytes=MAX_BODY,
            timeout=self._timeout_s,
            # tls.certificate judges the certificate; this is about the URI.
            verify_tls=False,
            method=signed.method,
            extra_headers=signed.headers,
        )
        request = result.request_details()
        if result.status is None:
            return judge_signed_request_error(
                _error_kind(result),
                result.error_message,
                request=request,
                target=target.address,
            )
        return judge_signed_request(
            result.status,
            result.headers,
            result.body,
            server_name=self._snapshot.server_name,
            request=request,
            key_id=key_id,
            target=target.address,
        )


class NotaryFamily(_BudgetedFamily):
    """`federation.notary`: do the trusted key servers hold the key response
    this server serves now? Runs after the network family, which fetched that
    response from our public addresses."""

    name = "notary"
    check_ids: Sequence[str] = NOTARY_CHECK_IDS

    def __init__(
        self,
        reactor: Any,
        snapshot: HomeserverSnapshot,
        settings: InsiderSettings,
        threadpool: Any,
        findings: Any,
        http: ProbeHttpClient,
        *,
        resolver: DnsResolver | None = None,
        trust: TrustStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(reactor, snapshot, settings, http)
        self._threadpool = threadpool
        self._findings = findings
        # The notary is found with the run's own DNS cache and trust store.
        self._resolver = resolver
        self._trust = trust
        self._wall_clock = wall_clock

    async def run(self) -> FamilyOutcome:
        self._start_clock()
        return FamilyOutcome(checks=tuple(await self._notaries()))

    def _minimum_valid_until_ts(self) -> int:
        """Ask for the key response we serve now.

        Synapse's notary answers from its cache only when the cached copy is
        valid until at least this; otherwise it fetches from us, and answers
        with whatever it has when that fails. Our current response is the
        newest there is, so a notary that returns it has fetched it from the
        outside since our server last refreshed it. Without a response seen
        on our public addresses, fall back to half a refresh interval ahead.
        """
        current = current_served_valid_until(self._findings, self._snapshot.server_name)
        if current is not None:
            return current
        return notary_minimum_valid_until_ts(
            int(self._wall_clock() * 1000), self._snapshot.key_refresh_interval_ms
        )

    # -- federation.notary ---------------------------------------------------

    async def _notaries(self) -> list[CheckResult]:
        plan = plan_notary_checks(
            self._snapshot, notary_check=self._settings.notary_check
        )
        results: list[CheckResult] = list(plan.skipped)
        if plan.notaries:
            results += await defer.gatherResults(
                [defer.ensureDeferred(self._ask_notary(n)) for n in plan.notaries],
                consumeErrors=True,
            )
        return results

    async def _ask_notary(self, notary: TrustedKeyServerInfo) -> CheckResult:
        # Find the notary as a Synapse peer would: with the same engine.
        from synapse_fedhealth.network import NetworkChecker, NetworkSettings

        key = self._snapshot.signing_keys[0]
        minimum = self._minimum_valid_until_ts()
        discovery_budget = self._remaining() * NOTARY_DISCOVERY_SHARE
        finder = NetworkChecker(
            self._reactor,
            NetworkSettings(
                server_name=notary.server_name,
                timeout_s=max(0.1, discovery_budget),
                cert_expiry_warning_days=self._settings.cert_expiry_warning_days,
                ca_files=self._settings.ca_files,
                dns_servers=self._settings.dns_servers,
                user_agent=self._settings.user_agent,
            ),
            self._threadpool,
            http=self._http,
            resolver=self._resolver,
            trust=self._trust,
        )
        found = await finder.run()
        url = f"https://{notary.server_name}{NOTARY_QUERY_PATH}"
        if not found.targets:
            return judge_notary_error(
                "unreachable",
                "the notary's name did not resolve to any address from here",
                notary=notary,
                request={
                    "url": url,
                    "host_header": notary.server_name,
                    "sni": notary.server_name,
                },
            )
        target = found.targets[0]
        url = f"https://{target.hostname}:{target.port}{NOTARY_QUERY_PATH}"
        body = json.dumps(
            build_notary_query(self._snapshot.server_name, [key.key_id], minimum)
        )
        result = await self._http.get(
            url,
            connect_to=(target.ip, target.port),
            host_header=target.host_header,
            sni=target.sni,
            max_bytes=MAX_BODY,
            timeout=self._remaining(),
            method="POST",
            extra_headers={"Content-Type": "application/json"},
            body=body.encode("utf-8"),
        )
        request = result.request_details()
        if result.status is None:
            return judge_notary_error(
                _error_kind(result),
                result.error_message,
                notary=notary,
                request=request,
            )
        return judge_notary_answer(
            result.status,
            result.headers,
            result.body,
            notary=notary,
            server_name=self._snapshot.server_name,
            signing_key=key,
            minimum_valid_until_ts=minimum,
            request=request,
        )


def current_served_valid_until(findings: Any, server_name: str) -> int | None:
    """The newest `valid_until_ts` of our own key responses that our public
    addresses served in this run, if any."""
    served = getattr(findings, "served_keys", None) or {}
    values = [
        keys.valid_until_ts
        for keys in served.values()
        if keys.server_name == server_name and isinstance(keys.valid_until_ts, int)
    ]
    return max(values) if values else None
