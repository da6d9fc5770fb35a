"""The admin endpoint `GET /_synapse/fedhealth` (SPEC 2.2).

Synapse mounts module resources on every HTTP listener, federation-only ones
included, so authentication happens here on every request: a server admin's
access token, exactly as Synapse's admin API takes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from synapse.api.errors import AuthError, Codes, SynapseError
from synapse.http.server import (
    DirectServeJsonResource,
    finish_request,
    set_cors_headers,
)

from synapse_fedhealth import homeserver
from synapse_fedhealth.render.bodies import FORMATS, ReportBodies
from synapse_fedhealth.render.html import CONTENT_SECURITY_POLICY, render_sign_in
from synapse_fedhealth.report import Report

if TYPE_CHECKING:
    from synapse.http.site import SynapseRequest
    from synapse.module_api import ModuleApi


def _query_arg(request: SynapseRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii")) if request.args else None
    if not values:
        return None
    try:
        value: str = values[-1].decode("utf-8")
        return value
    except UnicodeDecodeError:
        raise SynapseError(400, f"`{name}` is not UTF-8", Codes.INVALID_PARAM) from None


def _parse_bool(name: str, value: str | None) -> bool:
    if value is None:
        return False
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise SynapseError(400, f"`{name}` must be true or false", Codes.INVALID_PARAM)


class FedHealthResource(DirectServeJsonResource):
    """Serves the (cached) report to server admins only.

    It takes no target from the caller: only `format` and `refresh`. Every
    request is authenticated; the body itself is encoded once per report and
    format (`bodies`).
    """

    def __init__(
        self,
        api: ModuleApi,
        get_report: Callable[[bool], Awaitable[Report]],
    ) -> None:
        super().__init__()
        self._api = api
        self._get_report = get_report
        self.bodies = ReportBodies()

    async def _require_admin(self, request: SynapseRequest) -> None:
        # Raises MissingClientTokenError (401 M_MISSING_TOKEN) or
        # InvalidClientTokenError (401 M_UNKNOWN_TOKEN).
        requester = await self._api.get_user_by_req(request)
        if not await homeserver.is_server_admin(self._api, requester):
            raise AuthError(403, "You are not a server admin", Codes.FORBIDDEN)

    async def _async_render_GET(self, request: SynapseRequest) -> None:
        try:
            await self._require_admin(request)
        except SynapseError as e:
            # A browser asking for the page gets a page with the token form,
            # not a JSON error; with the same status (401, or 403 for a user
            # who is not a server admin).
            if e.code not in (401, 403) or _query_arg(request, "format") != "html":
                raise
            _write_html(request, e.code, render_sign_in(e.msg).encode("utf-8"))
            return
        output = _query_arg(request, "format") or "json"
        if output not in FORMATS:
            raise SynapseError(
                400, "`format` must be `json`, `text` or `html`", Codes.INVALID_PARAM
            )
        refresh = _parse_bool("refresh", _query_arg(request, "refresh"))
        # A coroutine that follows the logcontext rules: awaited directly.
        report = await self._get_report(refresh)
        body = self.bodies.body(report, output)
        if output == "text":
            _write_body(request, 200, b"text/plain; charset=utf-8", body)
        elif output == "html":
            _write_html(request, 200, body)
        else:
            # The CORS headers Synapse's JSON responses carry.
            set_cors_headers(request)
            _write_body(request, 200, b"application/json", body)
        return


def _write_html(request: SynapseRequest, code: int, page: bytes) -> None:
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode())  # type: ignore[no-untyped-call]
    # The page's URL may carry the access token: never send it on.
    request.setHeader(b"Referrer-Policy", b"no-referrer")  # type: ignore[no-untyped-call]
    request.setHeader(b"X-Content-Type-Options", b"nosniff")  # type: ignore[no-untyped-call]
    _write_body(request, code, b"text/html; charset=utf-8", page)


def _write_body(
    request: SynapseRequest, code: int, content_type: bytes, body: bytes
) -> None:
    """The whole body in one write. Synapse's `respond_with_json_bytes`
    streams a body in 4 KiB chunks through a producer, which is for bodies
    a slow client takes minutes to read; a report is tens of KiB, and the
    chunks cost a cached request about a quarter of its time."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", content_type)  # type: ignore[no-untyped-call]
    request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))  # type: ignore[no-untyped-call]
    request.write(body)  # type: ignore[no-untyped-call]
    finish_request(request)
