"""`client.well_known`: does `/.well-known/matrix/client` lead clients here?

Clients (Element and others) look up `https://<server_name>/.well-known/
matrix/client` to find the homeserver for a user id. A wrong or missing one
does not break federation, so every problem is a `warn`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from synapse_fedhealth.checks import proxy_detect
from synapse_fedhealth.checks.http_answer import (
    Headers,
    content_type,
    describe_answer,
    parse_json_object,
    request_details,
)
from synapse_fedhealth.checks.proxy_detect import ProxyGuess, with_proxy
from synapse_fedhealth.net.results import HttpResult, RedirectHop
from synapse_fedhealth.report import CheckResult, ok, warn

CLIENT_WELL_KNOWN = "client.well_known"
CLIENT_WELL_KNOWN_PATH = "/.well-known/matrix/client"
CLIENT_VERSIONS_PATH = "/_matrix/client/versions"
# Sent as a web client on another origin sends it, so that the answers are
# the ones a browser judges.
CLIENT_ORIGIN = "https://client.example"
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
CORS_SNIPPETS = {
    proxy_detect.NGINX: "`add_header Access-Control-Allow-Origin *;`",
    proxy_detect.CADDY: "`header Access-Control-Allow-Origin *`",
    proxy_detect.APACHE: '`Header set Access-Control-Allow-Origin "*"`',
    proxy_detect.TRAEFIK: "a headers middleware with `accessControlAllowOriginList=*`",
}


def fix_cors(proxy: str | None) -> str:
    return proxy_detect.proxy_fix(
        "Add `Access-Control-Allow-Origin: *` so web clients on other origins "
        "can read it (Synapse sets it itself when it serves the file)",
        CORS_SNIPPETS,
        proxy,
        "clientwell_known",
    )


FIX_CORS_TWICE = (
    "Send `Access-Control-Allow-Origin` once: the web server adds one on top "
    "of the one the upstream (Synapse, or another proxy) already sends, and "
    "browsers reject `*, *`. Drop the web server's `add_header "
    "Access-Control-Allow-Origin` for locations proxied to Synapse (or hide "
    "the upstream's: nginx `proxy_hide_header Access-Control-Allow-Origin;`)."
)
FIX_CORS_REDIRECT = (
    "Browsers check CORS on every hop of a cross-origin redirect: add "
    "`Access-Control-Allow-Origin: *` to the redirect responses too (nginx "
    "`add_header Access-Control-Allow-Origin *;` in the server block that "
    "redirects), or serve the file without a redirect."
)
FIX_NOT_HOMESERVER = (
    "`{base_url}` does not answer as a Matrix homeserver, so clients that "
    "follow the well-known can't log in. Set `public_baseurl` in "
    "homeserver.yaml to the URL where Synapse's client API is served (e.g. "
    "https://matrix.{server_name}/) and advertise that same URL as "
    "`m.homeserver.base_url`; or route `/_matrix` and `/_synapse/client` on "
    "{host} to Synapse."
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
    redirects: Sequence[RedirectHop] = (),
    versions: HttpResult | None = None,
    proxy: ProxyGuess | None = None,
) -> CheckResult:
    """Judge the fetched client well-known as a browser client would. Never
    raises, never fails.

    Without `knows_public_baseurl` (the `check` command, from outside) the
    advertised base_url can't be compared with the server's config.
    `redirects`: the hops that led to the answer, each judged for CORS.
    `versions`: the answer of `{base_url}/_matrix/client/versions`, fetched
    cross-origin (None: not fetched). `proxy`: the web server the answers
    showed; its snippet comes first in the fixes."""
    expected = expected_base_url(public_baseurl, server_name)
    details = with_proxy(request_details(request, http_status=status), proxy)
    proxy_name = proxy.name if proxy is not None else None
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

    details["content_type"] = content_type(headers)
    expected, problems, fixes = _base_url_problems(
        body, details, expected, server_name, knows_public_baseurl
    )
    cors_problems, cors_fixes = _cors_problems(headers, redirects, details, proxy_name)
    problems += cors_problems
    fixes += cors_fixes
    if versions is not None:
        base_url = str(details.get("base_url", ""))
        judged = judge_client_versions(versions, details)
        if judged is not None:
            problems.append(judged[0])
            fixes.append(
                fix_cors(proxy_name)
                if judged[1] == "cors"
                else FIX_NOT_HOMESERVER.format(
                    base_url=base_url,
                    server_name=server_name,
                    host=urllib.parse.urlsplit(base_url).netloc or server_name,
                )
            )

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


def _base_url_problems(
    body: bytes,
    details: dict[str, Any],
    expected: str,
    server_name: str,
    knows_public_baseurl: bool,
) -> tuple[str, list[str], list[str]]:
    """(the base URL clients are sent to, problems, fixes) of the body."""
    problems: list[str] = []
    fixes: list[str] = []
    obj, problem = parse_json_object(body)
    if obj is None:
        problems.append(f"it is not a JSON object ({problem})")
        fixes.append(FIX_PUBLISH.format(server_name=server_name, base_url=expected))
        return expected, problems, fixes
    homeserver = obj.get("m.homeserver")
    base_url = homeserver.get("base_url") if isinstance(homeserver, Mapping) else None
    if not isinstance(base_url, str):
        problems.append("it has no `m.homeserver.base_url` string")
        fixes.append(FIX_PUBLISH.format(server_name=server_name, base_url=expected))
        return expected, problems, fixes
    details["base_url"] = base_url[:MAX_VALUE_CHARS]
    if not knows_public_baseurl:
        return base_url[:MAX_VALUE_CHARS], problems, fixes
    if normalise_base_url(base_url) != normalise_base_url(expected):
        problems.append(
            f"`m.homeserver.base_url` is {base_url[:MAX_VALUE_CHARS]!r}, "
            f"not {expected!r}"
        )
        fixes.append(FIX_BASE_URL.format(base_url=expected))
    return expected, problems, fixes


def _cors_problems(
    headers: Headers,
    redirects: Sequence[RedirectHop],
    details: dict[str, Any],
    proxy_name: str | None,
) -> tuple[list[str], list[str]]:
    """CORS as a browser judges it: the answer's header, and every hop's."""
    problems: list[str] = []
    fixes: list[str] = []
    cors_values = header_values(headers, "access-control-allow-origin")
    details["access_control_allow_origin"] = ", ".join(cors_values) or None
    cors = cors_problem(cors_values)
    if cors is not None:
        problems.append(cors)
        fixes.append(
            FIX_CORS_TWICE if len(_split(cors_values)) > 1 else fix_cors(proxy_name)
        )
    hop_problems = _redirect_cors_problems(redirects)
    if hop_problems:
        details["redirects"] = [
            {
                "url": hop.url[:MAX_VALUE_CHARS],
                "status": hop.status,
                "access_control_allow_origin": ", ".join(
                    hop.header_values("access-control-allow-origin")
                )
                or None,
            }
            for hop in redirects
        ]
        problems.extend(hop_problems)
        fixes.append(FIX_CORS_REDIRECT)
    return problems, fixes


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


def advertised_base_url(body: bytes) -> str | None:
    """`m.homeserver.base_url` of a client well-known body, when it is a
    string (at most MAX_VALUE_CHARS long; a longer one is hostile)."""
    obj, _ = parse_json_object(body)
    homeserver = obj.get("m.homeserver") if obj is not None else None
    base_url = homeserver.get("base_url") if isinstance(homeserver, Mapping) else None
    if not isinstance(base_url, str) or len(base_url) > MAX_VALUE_CHARS:
        return None
    return base_url


def versions_url(base_url: str) -> str | None:
    """Where clients ask `base_url` for its versions; None unless https (the
    only scheme we fetch, and the only one browsers allow from an https
    page)."""
    if urllib.parse.urlsplit(base_url.strip()).scheme.lower() != "https":
        return None
    return base_url.strip().rstrip("/") + CLIENT_VERSIONS_PATH


def header_values(headers: Headers, name: str) -> tuple[str, ...]:
    """Every value of header `name` (case-insensitive), repeats kept."""
    wanted = name.lower()
    out: list[str] = []
    for key, values in headers.items():
        if not isinstance(key, str) or key.lower() != wanted:
            continue
        if isinstance(values, str):
            out.append(values)
        else:
            out.extend(v for v in values if isinstance(v, str))
    return tuple(out)


def _split(values: Sequence[str]) -> list[str]:
    # Repeated headers and a comma-joined one are the same to a browser.
    return [part.strip() for v in values for part in v.split(",")]


def cors_problem(values: Sequence[str]) -> str | None:
    """What a browser on another origin refuses in these
    `Access-Control-Allow-Origin` values; None when it reads the answer."""
    if not values:
        return "`Access-Control-Allow-Origin: *` is missing"
    parts = _split(values)
    if len(parts) > 1:
        shown = ", ".join(parts)[:MAX_VALUE_CHARS]
        return (
            f"`Access-Control-Allow-Origin` is sent {len(parts)} times "
            f"(`{shown}`): browsers reject more than one value"
        )
    if parts[0] != "*":
        return (
            f"`Access-Control-Allow-Origin` is {parts[0][:MAX_VALUE_CHARS]!r}, not `*`"
        )
    return None


def _redirect_cors_problems(redirects: Sequence[RedirectHop]) -> list[str]:
    problems = []
    for hop in redirects:
        problem = cors_problem(hop.header_values("access-control-allow-origin"))
        if problem is not None:
            problems.append(
                f"the HTTP {hop.status} redirect from {hop.url[:MAX_VALUE_CHARS]}: "
                f"{problem}, so browsers stop there"
            )
    return problems


def judge_client_versions(
    versions: HttpResult, details: dict[str, Any]
) -> tuple[str, str] | None:
    """Whether `{base_url}/_matrix/client/versions` answers as a homeserver
    and lets a browser read it: None, or (the problem, "not_homeserver" or
    "cors"). Records what it saw under `details["client_versions"]`."""
    seen: dict[str, Any] = {"url": versions.url[:MAX_VALUE_CHARS]}
    details["client_versions"] = seen
    where = versions.url[:MAX_VALUE_CHARS]
    if versions.status is None:
        error = versions.error_message[:MAX_VALUE_CHARS]
        seen["error"] = error
        return f"{where} could not be fetched ({error})", "not_homeserver"
    seen["http_status"] = versions.status
    if versions.status != 200:
        answer = describe_answer(versions.status, versions.headers, versions.body)
        return f"{where} answered {answer}, not a homeserver's", "not_homeserver"
    obj, problem = parse_json_object(versions.body)
    listed = obj.get("versions") if obj is not None else None
    if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
        what = problem or "no `versions` list"
        return f"{where} is not a Matrix versions answer ({what})", "not_homeserver"
    seen["versions"] = listed[:20]
    cors = cors_problem(header_values(versions.headers, "access-control-allow-origin"))
    found = ([cors] if cors else []) + _redirect_cors_problems(versions.redirects)
    if found:
        return f"{where}: " + "; ".join(found) + " (browsers can't read it)", "cors"
    return None
