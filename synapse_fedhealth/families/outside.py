"""Checks through the public client paths that need no resolved target of
ours: the forwarded headers (SPEC 4.5 proxy.forwarded_headers) and the
client well-known (client.well_known)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import attr
from twisted.internet import defer

from synapse_fedhealth.check_ids import Family
from synapse_fedhealth.checks.client_wellknown import (
    CLIENT_ORIGIN,
    CLIENT_WELL_KNOWN,
    CLIENT_WELL_KNOWN_PATH,
    advertised_base_url,
    judge_client_well_known,
    judge_client_well_known_error,
    versions_url,
)
from synapse_fedhealth.checks.forwarded import (
    ECHO_PATH,
    FORWARDED_HEADERS,
    EchoRecord,
    judge_forwarded_headers,
    judge_forwarded_headers_error,
)
from synapse_fedhealth.checks.proxy_detect import detect_proxy, first_guess
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.probes import request_to_target
from synapse_fedhealth.engine.resolution import bounded_get
from synapse_fedhealth.engine.spawn import spawn
from synapse_fedhealth.homeserver import ListenerInfo
from synapse_fedhealth.matrix_names import bare_host
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.report import CheckResult, Status, skip
from synapse_fedhealth.runner import FamilyOutcome
from synapse_fedhealth.server_discovery import Target
from synapse_fedhealth.wiring import RunIO

if TYPE_CHECKING:
    from synapse_fedhealth.engine.network_checker import NetworkFindings

MAX_BODY = 256 * 1024  # these answers are small JSON objects; more is hostile


def error_kind(result: HttpResult) -> str:
    return result.error or "error"


class EchoNonces(Protocol):
    """The echo resource's nonces (`echo.NonceBook`): one per echo request,
    and the check that an answer was signed by this server for it."""

    def issue(self) -> str: ...

    def verify_answer(self, nonce: str, body: bytes, mac: str) -> bool: ...


class OutsideViewFamily:
    """client.well_known, as a web client on another origin sees it. Without
    `knows_config` (the `check` command) the advertised base_url is not
    compared with a `public_baseurl` it can't see."""

    name = Family.OUTSIDE.value
    check_ids: Sequence[str] = (CLIENT_WELL_KNOWN,)

    def __init__(
        self,
        io: RunIO,
        server_name: str,
        *,
        public_baseurl: str | None,
        knows_config: bool = True,
    ) -> None:
        self._http = io.http
        self._server_name = server_name
        self._public_baseurl = public_baseurl
        self._knows_config = knows_config

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        return FamilyOutcome(checks=tuple(await self._client_well_known(deadline)))

    # -- client.well_known ---------------------------------------------------------

    async def _client_well_known(self, deadline: Deadline) -> list[CheckResult]:
        name = self._server_name
        url = f"https://{name}{CLIENT_WELL_KNOWN_PATH}"
        # Fetched as a web client on another origin fetches them.
        cross_origin = {"Origin": CLIENT_ORIGIN}
        result = await bounded_get(
            self._http,
            url,
            deadline,
            max_bytes=MAX_BODY,
            follow_redirects=True,
            extra_headers=cross_origin,
        )
        request = result.request_details()
        if result.status is None:
            return [
                judge_client_well_known_error(
                    error_kind(result),
                    result.error_message,
                    server_name=name,
                    request=request,
                )
            ]
        versions = None
        base_url = advertised_base_url(result.body) if result.status == 200 else None
        versions_at = versions_url(base_url) if base_url else None
        if versions_at is not None:
            # What clients do next: is base_url a homeserver at all?
            versions = await bounded_get(
                self._http,
                versions_at,
                deadline,
                max_bytes=MAX_BODY,
                follow_redirects=True,
                extra_headers=cross_origin,
            )
        return [
            judge_client_well_known(
                result.status,
                result.headers,
                result.body,
                public_baseurl=self._public_baseurl,
                server_name=name,
                request=request,
                knows_public_baseurl=self._knows_config,
                redirects=result.redirects,
                versions=versions,
                proxy=first_guess(
                    [(result.headers, result.body)]
                    + [(hop.headers, b"") for hop in result.redirects]
                    + ([(versions.headers, versions.body)] if versions else [])
                ),
            )
        ]


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class EchoPath:
    """One way into this server that an echo request is sent through."""

    label: str  # "client" (public_baseurl) or "federation" (a peers' target)
    url: str  # without the nonce
    sent_host: str
    sent_scheme: str = "https"
    connect_to: tuple[str, int] | None = None
    host_header: str | None = None
    sni: str | None = None
    target: str | None = None
    # The federation path's target: the echo rides the run's connection to it.
    via: Target | None = None
    # Peers' Host carries the federation port; proxies pass `$host` without it.
    port_optional: bool = False

    def describe(self) -> str:
        if self.label == "client":
            return f"the public client path {self.url}"
        return f"the federation path peers use ({self.target}, Host {self.host_header})"


def echo_paths(
    public_baseurl: str | None, targets: Sequence[Target]
) -> tuple[EchoPath, ...]:
    """The public client path (public_baseurl) and the federation path (the
    first target peers connect to, with their Host and SNI)."""
    paths = []
    if public_baseurl:
        parsed = urllib.parse.urlsplit(public_baseurl)
        paths.append(
            EchoPath(
                label="client",
                url=urllib.parse.urljoin(public_baseurl, ECHO_PATH.lstrip("/")),
                sent_host=parsed.netloc,
                sent_scheme=parsed.scheme or "https",
            )
        )
    if targets:
        target = targets[0]
        paths.append(
            EchoPath(
                label="federation",
                url=f"https://{target.host_header}{ECHO_PATH}",
                sent_host=target.host_header,
                connect_to=(target.ip, target.port),
                host_header=target.host_header,
                sni=target.sni,
                target=target.address,
                via=target,
                port_optional=True,
            )
        )
    return tuple(paths)


def _distinct_listeners(results: Sequence[CheckResult]) -> list[CheckResult]:
    """One result per listener and verdict: when both paths reach the same
    listener and it received the same, the first (the client path) speaks
    for both."""
    kept: list[CheckResult] = []
    seen: set[tuple[object, ...]] = set()
    for result in results:
        received = result.details.get("received")
        record = EchoRecord.from_json(received)
        key: tuple[object, ...] = (result.details.get("listener"), result.status)
        if record is not None:
            key += (
                record.x_forwarded_for is None,
                record.x_forwarded_proto,
                bare_host(record.host or ""),
                record.tls,
                record.listener_x_forwarded,
            )
        if key not in seen:
            seen.add(key)
            kept.append(result)
    return kept


class ForwardedHeadersFamily:
    """`proxy.forwarded_headers` through every public way in: the client path
    (public_baseurl) and the federation path peers use (from the network
    findings; None: the network checks did not finish, so only the client
    path is tried). It skips only when no path reaches this Synapse."""

    name = Family.OUTSIDE.value + " (forwarded headers)"
    check_ids: Sequence[str] = (FORWARDED_HEADERS,)

    def __init__(
        self,
        io: RunIO,
        *,
        public_baseurl: str | None,
        listeners: Sequence[ListenerInfo] = (),
        echo: EchoNonces | None = None,
        network: NetworkFindings | None = None,
    ) -> None:
        self._http = io.http
        self._connections = io.targets
        self._listeners = tuple(listeners)
        self._echo = echo
        targets = network.targets if network is not None else ()
        self._paths = echo_paths(public_baseurl, targets)

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        checks = await self._forwarded_headers(deadline)
        listener_index = next(
            (
                c.details["listener_index"]
                for c in checks
                if isinstance(c.details.get("listener_index"), int)
            ),
            None,
        )
        return FamilyOutcome(checks=tuple(checks), public_listener_index=listener_index)

    async def _forwarded_headers(self, deadline: Deadline) -> list[CheckResult]:
        if self._echo is None:
            return [
                skip(FORWARDED_HEADERS, "skipped: the echo resource is not mounted")
            ]
        if not self._paths:
            return [
                skip(
                    FORWARDED_HEADERS,
                    "skipped: public_baseurl is not set and discovery found no "
                    "federation target, so there is no public path to send a "
                    "request through",
                    details={"reason": "no_path", "paths_tried": []},
                )
            ]
        results: list[CheckResult] = await defer.gatherResults(
            [spawn(self._echo_through(p, deadline)) for p in self._paths],
            consumeErrors=True,
        )
        tried = [
            {"path": p.label, "url": p.url, "target": p.target, "summary": r.summary}
            for p, r in zip(self._paths, results, strict=True)
        ]
        routed = [r for r in results if r.status is not Status.SKIP]
        if not routed:
            return [
                skip(
                    FORWARDED_HEADERS,
                    "skipped: no public path routes "
                    f"{ECHO_PATH} to this Synapse; tried "
                    + "; ".join(
                        f"{p.describe()}: {r.summary.removeprefix('skipped: ')}"
                        for p, r in zip(self._paths, results, strict=True)
                    ),
                    details={"reason": "not_routed", "paths_tried": tried},
                )
            ]
        return [
            attr.evolve(r, details={**r.details, "paths_tried": tried})
            for r in _distinct_listeners(routed)
        ]

    async def _echo_through(self, path: EchoPath, deadline: Deadline) -> CheckResult:
        assert self._echo is not None
        nonce = self._echo.issue()
        url = f"{path.url}/{nonce}"
        if path.via is not None:
            # As a peer sends it: on the target's connection.
            result = await request_to_target(
                self._connections,
                self._http,
                path.via,
                url,
                deadline,
                max_bytes=MAX_BODY,
            )
        else:
            result = await bounded_get(
                self._http,
                url,
                deadline,
                max_bytes=MAX_BODY,
                verify_tls=False,
                connect_to=path.connect_to,
                host_header=path.host_header,
                sni=path.sni,
            )
        request = {**result.request_details(), "path": path.label}
        if result.status is None:
            return judge_forwarded_headers_error(
                error_kind(result),
                result.error_message,
                request=request,
                target=path.target,
            )
        return judge_forwarded_headers(
            result.status,
            result.headers,
            result.body,
            sent_host=path.sent_host,
            sent_scheme=path.sent_scheme,
            listeners=self._listeners,
            request=request,
            target=path.target,
            nonce=nonce,
            verify_answer=self._echo.verify_answer,
            port_optional=path.port_optional,
            proxy=detect_proxy(result.headers, result.body),
        )
