"""The admin endpoint `GET /_synapse/fedhealth` (SPEC 2.2).

Synapse mounts module resources on every HTTP listener, federation-only ones
included, so authentication happens here on every request: a server admin's
access token, exactly as Synapse's admin API takes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from synapse.api.errors import AuthError, Codes, SynapseError
from synapse.http.server import DirectServeJsonResource, finish_request

from synapse_fedhealth import homeserver
from synapse_fedhealth.check_docs import check_docs, installed_docs_path
from synapse_fedhealth.remote_text import clean_json
from synapse_fedhealth.render.html import (
    CONTENT_SECURITY_POLICY,
    render_html,
    render_sign_in,
)
from synapse_fedhealth.render.text import TEXT_WIDTH, render_text
from synapse_fedhealth.report import Report

if TYPE_CHECKING:
    from synapse.http.site import SynapseRequest
    from synapse.module_api import ModuleApi

FORMATS = ("json", "text", "html")


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

    It takes no target from the caller: only `format` and `refresh`.
    """

    def __init__(
        self,
        api: ModuleApi,
        get_report: Callable[[bool], Awaitable[Report]],
    ) -> None:
        super().__init__()
        self._api = api
        self._get_report = get_report

    async def _require_admin(self, request: SynapseRequest) -> None:
        # Raises MissingClientTokenError (401 M_MISSING_TOKEN) or
        # InvalidClientTokenError (401 M_UNKNOWN_TOKEN).
        requester = await self._api.get_user_by_req(request)
        if not await homeserver.is_server_admin(self._api, requester):
            raise AuthError(403, "You are not a server admin", Codes.FORBIDDEN)

    async def _async_render_GET(
        self, request: SynapseRequest
    ) -> tuple[int, Any] | None:
        try:
            await self._require_admin(request)
        except SynapseError as e:
            # A browser asking for the page gets a page with the token form,
            # not a JSON error; with the same status (401, or 403 for a user
            # who is not a server admin).
            if e.code not in (401, 403) or _query_arg(request, "format") != "html":
                raise
            _write_html(request, e.code, render_sign_in(e.msg))
            return None
        output = _query_arg(request, "format") or "json"
        if output not in FORMATS:
            raise SynapseError(
                400, "`format` must be `json`, `text` or `html`", Codes.INVALID_PARAM
            )
        refresh = _parse_bool("refresh", _query_arg(request, "refresh"))
        # A coroutine that follows the logcontext rules: awaited directly.
        report = await self._get_report(refresh)
        if output == "text":
            _write_body(
                request,
                200,
                b"text/plain; charset=utf-8",
                render_text(
                    report, width=TEXT_WIDTH, docs_path=installed_docs_path()
                ).encode("utf-8"),
            )
            return None
        if output == "html":
            _write_html(request, 200, render_html(report, docs=check_docs()))
            return None
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        # Last resort: Synapse encodes JSON as UTF-8, which a lone surrogate
        # in any value would turn into a 500.
        return 200, clean_json(report.to_json())


def _write_html(request: SynapseRequest, code: int, page: str) -> None:
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode())  # type: ignore[no-untyped-call]
    # The page's URL may carry the access token: never send it on.
    request.setHeader(b"Referrer-Policy", b"no-referrer")  # type: ignore[no-untyped-call]
    request.setHeader(b"X-Content-Type-Options", b"nosniff")  # type: ignore[no-untyped-call]
    _write_body(request, code, b"text/html; charset=utf-8", page.encode("utf-8"))


def _write_body(
    request: SynapseRequest, code: int, content_type: bytes, body: bytes
) -> None:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", content_type)  # type: ignore[no-untyped-call]
    request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))  # type: ignore[no-untyped-call]
    request.write(body)  # type: ignore[no-untyped-call]
    finish_request(request)
