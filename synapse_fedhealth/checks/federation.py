"""Federation endpoint checks per address (SPEC 4.4): version and keys."""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import attr
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from synapse_fedhealth.checks.discovery import Target
from synapse_fedhealth.net.http import ERR_TIMEOUT, HttpResult
from synapse_fedhealth.report import CheckResult, fail, ok, warn

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


def parse_json_object(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """Hostile-input-safe JSON: (object, "") or (None, what is wrong)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, "the body is not valid UTF-8"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None, "the body is not valid JSON"
    if not isinstance(value, dict):
        return None, f"the body is JSON but not an object ({type(value).__name__})"
    return value, ""


def _http_failure(
    check_id: str, target: Target, http: HttpResult, what: str
) -> CheckResult:
    details = _details(target, http)
    if http.error == ERR_TIMEOUT:
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


def canonical_json(value: Any) -> bytes:
    """Matrix canonical JSON (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(
        value,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    ).encode("utf-8")


def decode_base64(text: str) -> bytes:
    """Unpadded (standard or URL-safe) base64, as Matrix uses."""
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class KeyCheck:
    key_id: str
    valid_key: bool
    signature_ok: bool

    def to_json(self) -> dict[str, bool]:
        return {"ValidEd25519": self.valid_key, "MatchingSignature": self.signature_ok}


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ServedKeys:
    """The parsed /_matrix/key/v2/server answer of one address."""

    address: str
    raw: Mapping[str, Any]
    server_name: str | None
    valid_until_ts: int | None
    ed25519_keys: Mapping[str, str]  # key id -> unpadded base64 public key
    key_checks: tuple[KeyCheck, ...]

    @property
    def matching_server_name_ok(self) -> bool:
        return self.server_name is not None

    def federation_tester_checks(
        self, expected_server_name: str, now_ms: int
    ) -> dict[str, Any]:
        matching = self.server_name == expected_server_name
        future = self.valid_until_ts is not None and self.valid_until_ts > now_ms
        has_key = bool(self.key_checks)
        all_keys = has_key and all(
            k.valid_key and k.signature_ok for k in self.key_checks
        )
        return {
            "AllChecksOK": matching and future and has_key and all_keys,
            "MatchingServerName": matching,
            "FutureValidUntilTS": future,
            "HasEd25519Key": has_key,
            "AllEd25519ChecksOK": all_keys,
            "Ed25519Checks": {k.key_id: k.to_json() for k in self.key_checks},
        }


# Limits of what a remote JSON answer may put into the report.
MAX_REPORTED_DEPTH = 16
MAX_REPORTED_ITEMS = 100


def json_safe(value: Any, depth: int = 0) -> Any:
    """A copy of parsed remote JSON that any JSON encoder renders: nesting
    beyond MAX_REPORTED_DEPTH and containers beyond MAX_REPORTED_ITEMS are cut,
    and NaN/Infinity (which json.loads accepts) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict | list):
        if depth >= MAX_REPORTED_DEPTH:
            return "… (nested too deeply)"
        if isinstance(value, dict):
            items = list(value.items())[:MAX_REPORTED_ITEMS]
            return {str(k): json_safe(v, depth + 1) for k, v in items}
        return [json_safe(v, depth + 1) for v in value[:MAX_REPORTED_ITEMS]]
    return value


def parse_served_keys(address: str, body: Mapping[str, Any]) -> ServedKeys:
    server_name = body.get("server_name")
    valid_until = body.get("valid_until_ts")
    verify_keys = body.get("verify_keys")
    signatures = body.get("signatures")
    ed_keys: dict[str, str] = {}
    checks: list[KeyCheck] = []
    signed_part = {k: v for k, v in body.items() if k not in ("signatures", "unsigned")}
    try:
        message: bytes | None = canonical_json(signed_part)
    except (ValueError, TypeError, RecursionError):
        message = None
    server_sigs = (
        signatures.get(server_name)
        if isinstance(signatures, dict) and isinstance(server_name, str)
        else None
    )
    if isinstance(verify_keys, dict):
        for key_id, entry in list(verify_keys.items())[:16]:
            if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                continue
            key_b64 = entry.get("key") if isinstance(entry, dict) else None
            public: Ed25519PublicKey | None = None
            if isinstance(key_b64, str):
                try:
                    public = Ed25519PublicKey.from_public_bytes(decode_base64(key_b64))
                    ed_keys[key_id] = key_b64
                except (ValueError, binascii.Error):
                    public = None
            sig_b64 = server_sigs.get(key_id) if isinstance(server_sigs, dict) else None
            sig_ok = False
            if public is not None and isinstance(sig_b64, str) and message is not None:
                try:
                    public.verify(decode_base64(sig_b64), message)
                    sig_ok = True
                except (InvalidSignature, ValueError, binascii.Error):
                    sig_ok = False
            checks.append(
                KeyCheck(
                    key_id=key_id, valid_key=public is not None, signature_ok=sig_ok
                )
            )
    return ServedKeys(
        address=address,
        raw=json_safe(body),
        server_name=server_name if isinstance(server_name, str) else None,
        valid_until_ts=valid_until
        if isinstance(valid_until, int) and not isinstance(valid_until, bool)
        else None,
        ed25519_keys=ed_keys,
        key_checks=tuple(checks),
    )


def check_keys(
    target: Target, http: HttpResult, server_name: str, *, now_ms: int | None = None
) -> tuple[CheckResult, ServedKeys | None]:
    if http.error is not None:
        return _http_failure(KEYS, target, http, "GET " + KEYS_PATH), None
    if http.status != 200:
        return _status_failure(KEYS, target, http), None
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    details = _details(target, http)
    details["content_type"] = http.content_type
    body, problem = parse_json_object(http.body)
    if body is None:
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
    served = parse_served_keys(target.address, body)
    details["server_name"] = served.server_name
    details["valid_until_ts"] = served.valid_until_ts
    details["key_ids"] = [k.key_id for k in served.key_checks]

    def _fail(summary: str, fix: str, reason: str) -> tuple[CheckResult, ServedKeys]:
        details["reason"] = reason
        return fail(
            KEYS, summary, fix=fix, target=target.address, details=details
        ), served

    if served.server_name != server_name:
        return _fail(
            f"{target.address} serves the keys of {served.server_name!r}, not {server_name!r}: the public path reaches another server",
            f"Point the DNS/well-known/proxy for {server_name} at the Synapse whose `server_name` is {server_name} "
            "(check the proxy's upstream and the default vhost).",
            "wrong_server_name",
        )
    if not served.key_checks:
        return _fail(
            f"{target.address} serves no ed25519 verify key",
            "Check Synapse's `signing_key_path`; Synapse always serves its ed25519 key unless something else answers this path.",
            "no_key",
        )
    bad_keys = [
        k.key_id for k in served.key_checks if not (k.valid_key and k.signature_ok)
    ]
    if bad_keys:
        return _fail(
            f"the self-signature does not verify for {', '.join(bad_keys)}: peers reject these keys",
            "Something between peers and Synapse alters the key answer (a proxy rewriting JSON or caching an old answer), "
            "or the signing key file is corrupt.",
            "bad_signature",
        )
    if served.valid_until_ts is None or served.valid_until_ts <= now_ms:
        return _fail(
            "valid_until_ts is missing or in the past: peers treat the key as expired",
            "Something serves a stale key answer (a caching proxy or CDN in front of /_matrix/key); don't cache it.",
            "expired_keys",
        )
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
