"""Checks through the public client paths that need no resolved target of
ours: the forwarded headers (SPEC 4.5 proxy.forwarded_headers) and the
client well-known (client.well_known)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Protocol

from twisted.internet import defer

from synapse_fedhealth.check_ids import Family, ids_of
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
    judge_forwarded_headers,
    judge_forwarded_headers_error,
)
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.resolution import bounded_get
from synapse_fedhealth.homeserver import ListenerInfo
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.report import CheckResult, skip
from synapse_fedhealth.runner import FamilyOutcome
from synapse_fedhealth.wiring import RunIO

MAX_BODY = 256 * 1024  # these answers are small JSON objects; more is hostile


def error_kind(result: HttpResult) -> str:
    return result.error or "error"


class EchoNonces(Protocol):
    """The echo resource's nonces (`echo.NonceBook`): one per echo request,
    and the check that an answer was signed by this server for it."""

    def issue(self) -> str: ...

    def verify_answer(self, nonce: str, body: bytes, mac: str) -> bool: ...


class OutsideViewFamily:
    """`public_baseurl` and `listeners` come from our config; the `check`
    command runs this family without them (then only client.well_known, and
    without comparing its base_url to a config it can't see)."""

    name = Family.OUTSIDE.value
    check_ids: Sequence[str] = ids_of(Family.OUTSIDE)

    def __init__(
        self,
        io: RunIO,
        server_name: str,
        *,
        public_baseurl: str | None,
        listeners: Sequence[ListenerInfo] = (),
        echo: EchoNonces | None = None,
        knows_config: bool = True,
    ) -> None:
        self._http = io.http
        self._server_name = server_name
        self._public_baseurl = public_baseurl
        self._listeners = tuple(listeners)
        self._echo = echo
        self._knows_config = knows_config
        if not knows_config:
            self.check_ids = (CLIENT_WELL_KNOWN,)

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        parts = [self._client_well_known(deadline)]
        if self._knows_config:
            parts.insert(0, self._forwarded_headers(deadline))
        groups: list[list[CheckResult]] = await defer.gatherResults(
            [defer.ensureDeferred(p) for p in parts], consumeErrors=True
        )
        checks = tuple(c for group in groups for c in group)
        listener_index = next(
            (
                c.details["listener_index"]
                for c in checks
                if c.id == FORWARDED_HEADERS
                and isinstance(c.details.get("listener_index"), int)
            ),
            None,
        )
        return FamilyOutcome(checks=checks, public_listener_index=listener_index)

    # -- proxy.forwarded_headers -------------------------------------------------

    async def _forwarded_headers(self, deadline: Deadline) -> list[CheckResult]:
        base = self._public_baseurl
        if not base:
            return [
                skip(
                    FORWARDED_HEADERS,
                    "skipped: public_baseurl is not set, so there is no public client "
                    "path to send a request through",
                )
            ]
        if self._echo is None:
            return [
                skip(FORWARDED_HEADERS, "skipped: the echo resource is not mounted")
            ]
        parsed = urllib.parse.urlsplit(base)
        nonce = self._echo.issue()
        url = urllib.parse.urljoin(base, ECHO_PATH.lstrip("/") + "/" + nonce)
        result = await bounded_get(
            self._http, url, deadline, max_bytes=MAX_BODY, verify_tls=False
        )
        request = result.request_details()
        if result.status is None:
            return [
                judge_forwarded_headers_error(
                    error_kind(result), result.error_message, request=request
                )
            ]
        return [
            judge_forwarded_headers(
                result.status,
                result.headers,
                result.body,
                sent_host=parsed.netloc,
                sent_scheme=parsed.scheme or "https",
                listeners=self._listeners,
                request=request,
                nonce=nonce,
                verify_answer=self._echo.verify_answer,
            )
        ]

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
            )
        ]
