"""`client.well_known`: does `/.well-known/matrix/client` lead clients here?

Clients (Element and others) look up `https://<server_name>/.well-known/
matrix/client` to find the homeserver for a user id. A wrong or missing one
does not break federation, so every problem is a `warn`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from synapse_fedhealth.checks.http_answer import (
    Headers,
    content_type,
    describe_answer,
    header_value,
    parse_json_object,
    request_details,
)
from synapse_fedhealth.report import CheckResult, ok, warn

CLIENT_WELL_KNOWN = "client.well_known"
CLIENT_WELL_KNOWN_PATH = "/.well-known/matrix/client"
MAX_VALUE_CHARS = 200

FIX_PUBLISH = (
    "Publish it: set `public_baseurl` in homeserver.yaml (Synapse then serves "
    "the client well-known on its `client` listener) and route "
    "/.well-known/matrix/ on {server_name} to Synapse, or serve it from the "
    "web server: nginx `location = /.well-known/matrix/client {{ default_type "
    "application/json; add_header Access-Control-Allow-Origin *; return 200 "
    '\'{{"m.homeserver": {{"base_url": "{base_url}"}}}}\'; }}`.'
)
FIX_BASE_URL = (
    "Make `m.homeserver.base_url` equal `public_baseurl` ({base_url}): if the "
    "web server serves the file, update it; if it is right, fix "
    "`public_baseurl` in homeserver.yaml instead."
)
FIX_CORS = (
    "Add `Access-Control-Allow-Origin: *` so web clients on other origins can "
    "read it: nginx `add_header Access-Control-Allow-Origin *;`, Caddy "
    "`header Access-Control-Allow-Origin *`, Apache `Header set "
    'Access-Control-Allow-Origin "*"`, Traefik a headers middleware with '
    "`accessControlAllowOriginList=*`. Synapse sets it itself when it serves "
    "the file."
)
FIX_UNREACHABLE = (
    "Clients can't fetch /.well-known/matrix/client from {server_name}; see "
    "the discovery and connection results for that host."
)


def normalise_base_url(url: str) -> str:
    """Compare base URLs as clients do: case-insensitive scheme and host,
    default port dropped, trailing slashes ignored."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        hostname = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return url.strip()
    scheme = parts.scheme.lower()
    # urlsplit strips the brackets of an IPv6 literal; put them back.
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and {"https": 443, "http": 80}.get(scheme) != port:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


def expected_base_url(public_baseurl: str | None, server_name: str) -> str:
    """`public_baseurl`, or what Synapse assumes when it is unset."""
    if public_baseurl:
        return public_baseurl
    return f"https://{server_name}/"


def judge_client_well_known(
    status: int,
    headers: Headers,
    body: bytes,
    *,
    public_baseurl: str | None,
    server_name: str,
    request: Mapping[str, Any],
    knows_public_baseurl: bool = True,
) -> CheckResult:
    """Judge the fetched client well-known. Never raises, never fails.

    Without `knows_public_baseurl` (the `check` command, from outside) the
    advertised base_url can't be compared with the server's config."""
    expected = expected_base_url(public_baseurl, server_name)
    details = request_details(request, http_status=status)
    if knows_public_baseurl:
        details["expected_base_url"] = expected
    if public_baseurl is None and knows_public_baseurl:
        details["note"] = "public_baseurl is unset; compared with Synapse's default"
    if status != 200:
        details["reason"] = "missing" if status == 404 else "http_error"
        return warn(
            CLIENT_WELL_KNOWN,
            f"no client well-known at {server_name}: "
            + describe_answer(status, headers, body),
            fix=FIX_PUBLISH.format(server_name=server_name, base_url=expected),
            details=details,
        )

    problems: list[str] = []
    fixes: list[str] = []
    details["content_type"] = content_type(headers)
    obj, problem = parse_json_object(body)
    if obj is None:
        problems.append(f"it is not a JSON object ({problem})")
        fixes.append(FIX_PUBLISH.format(server_name=server_name, base_url=expected))
    else:
        homeserver = obj.get("m.homeserver")
        base_url = (
            homeserver.get("base_url") if isinstance(homeserver, Mapping) else None
        )
        if not isinstance(base_url, str):
            problems.append("it has no `m.homeserver.base_url` string")
            fixes.append(FIX_PUBLISH.format(server_name=server_name, base_url=expected))
        else:
            details["base_url"] = base_url[:MAX_VALUE_CHARS]
            if not knows_public_baseurl:
                expected = base_url[:MAX_VALUE_CHARS]
            elif normalise_base_url(base_url) != normalise_base_url(expected):
                problems.append(
                    f"`m.homeserver.base_url` is {base_url[:MAX_VALUE_CHARS]!r}, "
                    f"not {expected!r}"
                )
                fixes.append(FIX_BASE_URL.format(base_url=expected))

    cors = header_value(headers, "access-control-allow-origin")
    details["access_control_allow_origin"] = cors
    if cors is None or cors.strip() != "*":
        problems.append(
            "`Access-Control-Allow-Origin: *` is missing"
            if cors is None
            else f"`Access-Control-Allow-Origin` is {cors[:MAX_VALUE_CHARS]!r}, not `*`"
        )
        fixes.append(FIX_CORS)

    if problems:
        details["problems"] = problems
        return warn(
            CLIENT_WELL_KNOWN,
            "client well-known: " + "; ".join(problems),
            fix=" ".join(dict.fromkeys(fixes)),
            details=details,
        )
    return ok(
        CLIENT_WELL_KNOWN,
        f"client well-known points clients to {expected}",
        details=details,
    )


def judge_client_well_known_error(
    reason: str, message: str, *, server_name: str, request: Mapping[str, Any]
) -> CheckResult:
    """No HTTP answer (timeout, refused, TLS...): a warn, never a fail."""
    details = request_details(request, reason=reason)
    if message:
        details["error"] = message[:MAX_VALUE_CHARS]
    what = "timed out" if reason == "timeout" else f"failed ({reason})"
    return warn(
        CLIENT_WELL_KNOWN,
        f"fetching the client well-known of {server_name} {what}",
        fix=FIX_UNREACHABLE.format(server_name=server_name),
        details=details,
    )
