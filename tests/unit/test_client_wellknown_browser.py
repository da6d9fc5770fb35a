"""client.well_known judged as a browser client on another origin judges it:
one `Access-Control-Allow-Origin` value, CORS on every redirect hop, and a
base_url that answers `/_matrix/client/versions` as a homeserver."""

from __future__ import annotations

import json

from synapse_fedhealth.checks.client_wellknown import (
    advertised_base_url,
    cors_problem,
    judge_client_well_known,
    versions_url,
)
from synapse_fedhealth.net.results import HttpResult, ProbeError, RedirectHop
from synapse_fedhealth.report import CheckResult, Status
from tests.unit.insider_helpers import REQUEST, SERVER_NAME

BASE = "https://matrix.example.com/"
BODY = json.dumps({"m.homeserver": {"base_url": BASE}}).encode()
JSON = ("application/json",)
VERSIONS_URL = "https://matrix.example.com/_matrix/client/versions"


def versions(
    status: int | None = 200,
    body: bytes = b'{"versions": ["v1.11"]}',
    cors: tuple[str, ...] = ("*",),
) -> HttpResult:
    headers: dict[str, tuple[str, ...]] = {"content-type": JSON}
    if cors:
        headers["access-control-allow-origin"] = cors
    if status is None:
        return HttpResult(
            url=VERSIONS_URL,
            host_header="matrix.example.com",
            sni="matrix.example.com",
            error=ProbeError.REFUSED,
            error_message="connection refused",
        )
    return HttpResult(
        url=VERSIONS_URL,
        host_header="matrix.example.com",
        sni="matrix.example.com",
        status=status,
        headers=headers,
        body=body,
    )


def judge(
    cors: tuple[str, ...] = ("*",),
    *,
    redirects: tuple[RedirectHop, ...] = (),
    answered: HttpResult | None = None,
    public_baseurl: str | None = BASE,
) -> CheckResult:
    headers = {"content-type": JSON, "access-control-allow-origin": cors}
    return judge_client_well_known(
        200,
        headers,
        BODY,
        public_baseurl=public_baseurl,
        server_name=SERVER_NAME,
        request=REQUEST,
        redirects=redirects,
        versions=answered if answered is not None else versions(),
    )


def test_good_setup_is_ok() -> None:
    result = judge()
    assert result.status is Status.OK, result.summary
    assert result.details["client_versions"]["versions"] == ["v1.11"]


def test_two_allow_origin_headers_are_what_browsers_reject() -> None:
    result = judge(("*", "*"))
    assert result.status is Status.WARN
    assert "sent 2 times" in result.summary
    assert "proxy_hide_header" in (result.fix or "")
    assert result.details["access_control_allow_origin"] == "*, *"


def test_comma_joined_allow_origin_is_the_same() -> None:
    assert cors_problem(["*, *"]) is not None
    assert cors_problem(["*"]) is None
    assert cors_problem([]) is not None


def test_a_redirect_hop_without_cors_stops_browsers() -> None:
    hop = RedirectHop(
        url="https://example.com/.well-known/matrix/client",
        status=301,
        location="https://www.example.com/.well-known/matrix/client",
        headers={"location": ("https://www.example.com/.well-known/matrix/client",)},
    )
    result = judge(redirects=(hop,))
    assert result.status is Status.WARN
    assert "HTTP 301 redirect from https://example.com/" in result.summary
    assert "server block that redirects" in (result.fix or "")
    assert result.details["redirects"][0]["access_control_allow_origin"] is None


def test_a_redirect_hop_with_cors_is_fine() -> None:
    hop = RedirectHop(
        url="https://example.com/.well-known/matrix/client",
        status=301,
        location="https://www.example.com/.well-known/matrix/client",
        headers={"access-control-allow-origin": ("*",)},
    )
    assert judge(redirects=(hop,)).status is Status.OK


def test_base_url_that_is_not_a_homeserver() -> None:
    # The "forgot public_baseurl" case: Synapse's default is the bare domain,
    # the well-known matches it, and the web server there answers 404.
    result = judge(
        answered=versions(404, b"<html>404 Not Found</html>", cors=()),
        public_baseurl=None,
    )
    assert result.status is Status.WARN
    assert "not a homeserver" in result.summary
    assert "public_baseurl" in (result.fix or "")
    assert result.details["client_versions"]["http_status"] == 404


def test_base_url_unreachable() -> None:
    result = judge(answered=versions(None))
    assert result.status is Status.WARN
    assert "could not be fetched" in result.summary


def test_versions_without_cors_is_a_cors_problem() -> None:
    result = judge(answered=versions(cors=()))
    assert result.status is Status.WARN
    assert "browsers can't read it" in result.summary
    assert "Access-Control-Allow-Origin: *" in (result.fix or "")


def test_versions_not_json() -> None:
    result = judge(answered=versions(body=b"hello"))
    assert "not a Matrix versions answer" in result.summary


def test_base_url_extraction_is_bounded() -> None:
    assert advertised_base_url(BODY) == BASE
    assert advertised_base_url(b"[]") is None
    long = json.dumps({"m.homeserver": {"base_url": "https://" + "a" * 500}})
    assert advertised_base_url(long.encode()) is None
    assert versions_url("https://m.example.com/") == VERSIONS_URL.replace(
        "matrix.", "m."
    )
    assert versions_url("http://m.example.com") is None
