"""Federation endpoint checks per address (SPEC 4.4): version and keys."""

from __future__ import annotations

import functools
from typing import Any

import attr

from synapse_fedhealth.checks.discovery import Target
from synapse_fedhealth.checks.http_answer import parse_json_object
from synapse_fedhealth.net.results import HttpResult, ProbeError
from synapse_fedhealth.remote_text import clean_line
from synapse_fedhealth.report import CheckResult, fail, ok, warn
from synapse_fedhealth.signing import ServedKeys as ServedKeys
from synapse_fedhealth.signing import parse_served_keys

VERSION = "federation.version"
KEYS = "federation.keys"

VERSION_PATH = "/_matrix/federation/v1/version"
KEYS_PATH = "/_matrix/key/v2/server"

MS_PER_HOUR = 3600 * 1000
MIN_KEY_VALIDITY_MS = MS_PER_HOUR
MAX_KEY_VALIDITY_MS = 7 * 24 * MS_PER_HOUR

_FIX_ROUTE = (
    "Route /_matrix/federation and /_matrix/key to a Synapse listener with the `federation` resource: "
    "nginx `location ~ ^/_matrix/ {{ proxy_pass http://127.0.0.1:8008; }}` (no URI after the port) in the "
    "server block for port {port}; Caddy `reverse_proxy /_matrix/* 127.0.0.1:8008`; "
    "Apache `ProxyPass /_matrix http://127.0.0.1:8008/_matrix nocanon`."
)


def endpoint_url(target: Target, path: str) -> str:
    return f"https://{target.host_header}{path}"


def _details(target: Target, http: HttpResult) -> dict[str, Any]:
    details = http.request_details()
    details["connected_to"] = target.address
    return details


def _http_failure(
    check_id: str, target: Target, http: HttpResult, what: str
) -> CheckResult:
    details = _details(target, http)
    if http.error == ProbeError.TIMEOUT:
        details["reason"] = "timeout"
        return fail(
            check_id,
            f"{what} on {target.address} timed out",
            fix="Find why the federation endpoint answers so slowly (a stuck proxy upstream, an overloaded Synapse).",
            target=target.address,
            details=details,
        )
    details["reason"] = http.error or "error"
    return fail(
        check_id,
        f"{what} on {target.address} failed: {http.error_message or http.error}",
        fix="See connection.reachable and tls.handshake for this address.",
        target=target.address,
        details=details,
    )


def _status_failure(check_id: str, target: Target, http: HttpResult) -> CheckResult:
    details = _details(target, http)
    status = http.status
    details["reason"] = "http_status"
    if status == 404:
        summary = (
            f"HTTP 404 from {target.address}: the request reached something that does not serve federation "
            "(a listener without the `federation` resource, or a proxy that does not route this path)"
        )
        fix = (
            _FIX_ROUTE.format(port=target.port)
            + " In Synapse, add `federation` to that listener's `resources` `names`."
        )
    elif status in (502, 503, 504):
        summary = f"HTTP {status} from {target.address}: a reverse proxy answered, but its upstream (Synapse) is down or unreachable"
        fix = "Start Synapse and check the proxy's upstream address and port (the `proxy_pass` / `reverse_proxy` target) match a Synapse listener."
    elif status in (301, 302, 307, 308):
        summary = f"HTTP {status} redirect from {target.address}: peers don't follow redirects on federation requests"
        fix = "Serve /_matrix/ directly on this host and port instead of redirecting (often an http->https or www redirect rule)."
    else:
        summary = f"HTTP {status} from {target.address}"
        fix = _FIX_ROUTE.format(port=target.port)
    return fail(check_id, summary, fix=fix, target=target.address, details=details)


def check_version(
    target: Target, http: HttpResult
) -> tuple[CheckResult, dict[str, str] | None]:
    """`federation.version`; also returns {"name", "version"} when served."""
    if http.error is not None:
        return _http_failure(VERSION, target, http, "GET " + VERSION_PATH), None
    if http.status != 200:
        return _status_failure(VERSION, target, http), None
    details = _details(target, http)
    body, problem = parse_json_object(http.body)
    server = body.get("server") if body is not None else None
    name = server.get("name") if isinstance(server, dict) else None
    version = server.get("version") if isinstance(server, dict) else None
    if isinstance(name, str) and isinstance(version, str):
        # Remote text: cleaned where it enters the report.
        name, version = clean_line(name), clean_line(version)
    if not isinstance(name, str) or not isinstance(version, str):
        details["reason"] = "invalid"
        return (
            fail(
                VERSION,
                f"HTTP 200 from {target.address}, but not a federation version answer: "
                + (problem or 'no "server": {"name", "version"} strings'),
                fix=_FIX_ROUTE.format(port=target.port)
                + " Something else (a web app, a default vhost) answers this path.",
                target=target.address,
                details=details,
            ),
            None,
        )
    details["server"] = {"name": name[:100], "version": version[:100]}
    return ok(
        VERSION, f"{name[:100]} {version[:100]}", target=target.address, details=details
    ), {"name": name[:100], "version": version[:100]}


# ---------------------------------------------------------------------------
# Keys


def _key_failure(
    served: ServedKeys, server_name: str, target: Target, now_ms: int
) -> tuple[str, str, str] | None:
    """(summary, fix, reason) when peers can't use the served keys."""
    if served.server_name != server_name:
        return (
            f"{target.address} serves the keys of {served.server_name!r}, not {server_name!r}: the public path reaches another server",
            f"Point the DNS/well-known/proxy for {server_name} at the Synapse whose `server_name` is {server_name} "
            "(check the proxy's upstream and the default vhost).",
            "wrong_server_name",
        )
    if not served.key_checks:
        return (
            f"{target.address} serves no ed25519 verify key",
            "Check Synapse's `signing_key_path`; Synapse always serves its ed25519 key unless something else answers this path.",
            "no_key",
        )
    bad_keys = [
        k.key_id for k in served.key_checks if not (k.valid_key and k.signature_ok)
    ]
    if bad_keys:
        return (
            f"the self-signature does not verify for {', '.join(bad_keys)}: peers reject these keys",
            "Something between peers and Synapse alters the key answer (a proxy rewriting JSON or caching an old answer), "
            "or the signing key file is corrupt.",
            "bad_signature",
        )
    if served.valid_until_ts is None or served.valid_until_ts <= now_ms:
        return (
            "valid_until_ts is missing or in the past: peers treat the key as expired",
            "Something serves a stale key answer (a caching proxy or CDN in front of /_matrix/key); don't cache it.",
            "expired_keys",
        )
    return None


# Every address of a server serves the same key answer; parsing it and
# verifying its signatures (canonical JSON, ed25519) once is enough. Only
# answers of a plausible size are kept (a real one is 1-2 KiB): what the
# cache holds stays small whatever a server sends.
_CACHED_KEY_ANSWER_BYTES = 16 * 1024


def _parse_key_answer(body: bytes) -> tuple[ServedKeys | None, str]:
    """(the answer, parsed and its signatures checked, with no address; or
    None and what is wrong)."""
    if len(body) <= _CACHED_KEY_ANSWER_BYTES:
        return _parse_small_key_answer(body)
    return _parse_key_answer_uncached(body)


def _parse_key_answer_uncached(body: bytes) -> tuple[ServedKeys | None, str]:
    obj, problem = parse_json_object(body)
    if obj is None:
        return None, problem
    return parse_served_keys("", obj), ""


_parse_small_key_answer = functools.lru_cache(maxsize=16)(_parse_key_answer_uncached)


def check_keys(
    target: Target, http: HttpResult, server_name: str, *, now_ms: int
) -> tuple[CheckResult, ServedKeys | None]:
    """`federation.keys`; also returns the parsed answer when there is one."""
    if http.error is not None:
        return _http_failure(KEYS, target, http, "GET " + KEYS_PATH), None
    if http.status != 200:
        return _status_failure(KEYS, target, http), None
    details = _details(target, http)
    details["content_type"] = http.content_type
    parsed, problem = _parse_key_answer(http.body)
    if parsed is None:
        details["reason"] = "invalid"
        return (
            fail(
                KEYS,
                f"the key answer from {target.address} is unusable: {problem}",
                fix=_FIX_ROUTE.format(port=target.port),
                target=target.address,
                details=details,
            ),
            None,
        )
    served = attr.evolve(parsed, address=target.address)
    details["server_name"] = served.server_name
    details["valid_until_ts"] = served.valid_until_ts
    details["key_ids"] = [k.key_id for k in served.key_checks]

    failure = _key_failure(served, server_name, target, now_ms)
    if failure is not None:
        summary, fix, reason = failure
        details["reason"] = reason
        return fail(
            KEYS, summary, fix=fix, target=target.address, details=details
        ), served
    assert served.valid_until_ts is not None
    ahead = served.valid_until_ts - now_ms
    # Clamped: a hostile 4,000-digit valid_until_ts would overflow a float.
    ahead_hours = min(ahead, 1000 * MAX_KEY_VALIDITY_MS) / MS_PER_HOUR
    details["valid_for_hours"] = round(ahead_hours, 1)
    if ahead < MIN_KEY_VALIDITY_MS or ahead > MAX_KEY_VALIDITY_MS:
        shown = (
            f"{ahead_hours:.1f} h"
            if ahead <= 1000 * MAX_KEY_VALIDITY_MS
            else "absurdly far"
        )
        return (
            warn(
                KEYS,
                f"valid_until_ts is {shown} ahead (expected between 1 h and 7 d)",
                fix="Set Synapse's `key_refresh_interval` between 1h and 7d (default 1d).",
                target=target.address,
                details=details,
            ),
            served,
        )
    if http.content_type != "application/json":
        return (
            warn(
                KEYS,
                f"served as {http.content_type or 'no Content-Type'} instead of application/json",
                fix="Don't override Content-Type for /_matrix/ in the proxy (e.g. an nginx `default_type` or `add_header` in that location).",
                target=target.address,
                details=details,
            ),
            served,
        )
    return ok(
        KEYS,
        f"{len(served.key_checks)} ed25519 key(s), signatures verify, valid for {ahead_hours:.0f} h",
        target=target.address,
        details=details,
    ), served
