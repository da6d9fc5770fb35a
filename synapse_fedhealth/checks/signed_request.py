"""`federation.signed_request`: does a request signed as a remote server signs
it pass Synapse's signature check through the public path?

The request: `GET /_matrix/federation/v1/state_ids/<room id>?event_id=<event id>`
for a room that does not exist, origin = destination = our own server name,
signed with our own key. Both ids are percent-encoded (`!`, `:`, `$`), so a
proxy that decodes and re-encodes the URI breaks the signature, as it would
for real peers (room and event ids are in most federation paths).

Why this request changes nothing on the server (Synapse 1.163):

- `Authenticator.authenticate_request`
  (synapse/federation/transport/server/_base.py:79-147) verifies the
  signature. Our own key is found locally (`Keyring._local_verify_keys`,
  synapse/crypto/keyring.py:222-233): no key fetch. It reads the
  destinations table for our own name and writes only if that row has a
  retry back-off, which Synapse never records for itself.
- `FederationStateIdsServlet.on_GET`
  (synapse/federation/transport/server/federation.py:182-197) calls
  `FederationServer.on_state_ids_request`
  (synapse/federation/federation_server.py:688-705), which first calls
  `EventAuthHandler.assert_host_in_room` (synapse/handlers/event_auth.py:
  170-198): two reads, then `403 M_FORBIDDEN "Host not in room."` for a room
  we are not in. No state is computed, nothing is written, no remote server
  is contacted.

What Synapse answers (1.163), and what it means here:

- auth passed: `403 M_FORBIDDEN "Host not in room."` (event_auth.py:198), or
  `403 M_UNABLE_DUE_TO_PARTIAL_STATE` (event_auth.py:191-195).
- `401 M_UNAUTHORIZED "Invalid signature for server <origin> with key
  <key id>: ..."` (keyring.py:416-426): the signed `uri` (or method) differs
  from what reached Synapse: the proxy rewrote the URI.
- `401 M_UNAUTHORIZED "Destination mismatch in auth header, received: ..."`
  (_base.py:114-118): the Synapse that answered is not `server_name`.
- `401 M_UNAUTHORIZED "Missing Authorization headers"` (_base.py:97-102 and
  125-130): the proxy dropped the Authorization header.
- `400 M_UNAUTHORIZED "Malformed Authorization header"` (_base.py:222-224):
  the proxy altered it.
- `401 M_UNAUTHORIZED "Failed to find any key to satisfy: ..."`
  (keyring.py:389-393): the Synapse that answered doesn't hold our key.
- `403 M_FORBIDDEN "Federation denied with <origin>."` (_base.py:119-123,
  synapse/api/errors.py:363-367): `federation_domain_whitelist` doesn't list
  our own name; checked before the signature, so the test is inconclusive.
- `404`/`405 M_UNRECOGNIZED`: no `federation` resource behind this address.
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import attr

from synapse_fedhealth.checks.http_answer import (
    Headers,
    describe_answer,
    matrix_error,
    parse_json_object,
    request_details,
)
from synapse_fedhealth.checks.xmatrix import format_xmatrix_header, sign_request
from synapse_fedhealth.homeserver import HomeserverSnapshot, SigningKeyInfo
from synapse_fedhealth.report import CheckResult, fail, ok, skip, warn

SIGNED_REQUEST = "federation.signed_request"

STATE_IDS_PREFIX = "/_matrix/federation/v1/state_ids/"
PROBE_ID_PREFIX = "fedhealth-probe-"
# Random bytes in the probe ids: a room that can't exist, and distinct ids per
# run so no cache (Synapse's or a proxy's) answers for an earlier run.
PROBE_TOKEN_BYTES = 9
ERROR_MESSAGE_CHARS = 300

FIX_URI_REWRITTEN = (
    "The reverse proxy rewrites the request URI, so the `uri` a remote server "
    "signed no longer matches what Synapse receives (percent-encoded `!`, `:` "
    "and `$` are decoded or re-encoded). Pass the URI through untouched. "
    "nginx: `proxy_pass http://127.0.0.1:8008;` with nothing after the port "
    "(not `http://127.0.0.1:8008/` or `.../_matrix/`), and no `rewrite` for "
    "/_matrix. Apache: `ProxyPass /_matrix http://127.0.0.1:8008/_matrix "
    "nocanon` with `AllowEncodedSlashes NoDecode`. Caddy: `reverse_proxy "
    "127.0.0.1:8008` without `uri`/`rewrite`. Traefik: no ReplacePath or "
    "StripPrefix middleware on /_matrix."
)
FIX_DESTINATION = (
    "The Synapse behind this address does not consider `{server_name}` its "
    "own name: the proxy (or DNS) sends federation traffic for {server_name} "
    "to another homeserver. Point the proxy's upstream for this host at the "
    "Synapse whose `server_name` is `{server_name}`."
)
FIX_NO_AUTH_HEADER = (
    "The reverse proxy drops the `Authorization` header, which carries the "
    'X-Matrix signature. Remove `proxy_set_header Authorization "";` (nginx), '
    "`RequestHeader unset Authorization` (Apache) or a Traefik/Caddy rule that "
    "strips it, and don't put HTTP authentication in front of /_matrix/federation."
)
FIX_MALFORMED_AUTH = (
    "The reverse proxy alters the `Authorization` header. Pass it unchanged "
    "(no header rewriting or re-encoding on /_matrix/federation)."
)
FIX_NO_KEY = (
    "The Synapse that answered does not hold this server's signing key "
    "{key_id}: the public address reaches another or an older homeserver. See "
    "`federation.key_matches_local` and point the proxy at this Synapse."
)
FIX_NOT_SERVED = (
    "No listener with the `federation` resource answers /_matrix/federation at "
    "this address. Add `federation` to the listener's resources and route "
    "/_matrix/ to it: nginx `location /_matrix/ { proxy_pass "
    "http://127.0.0.1:8008; }`, Caddy `reverse_proxy /_matrix/* 127.0.0.1:8008`."
)
FIX_NOT_SYNAPSE = (
    "Something other than Synapse's federation API answered. Route /_matrix/ "
    "(including /_matrix/federation) on this host and port to Synapse's "
    "federation listener; a 502/503/504 means the proxy's upstream is down or "
    "unreachable."
)
FIX_OTHER_401 = (
    "Synapse refused the signature of a correctly signed request. Check that "
    "the proxy passes the method, URI, Host and Authorization header unchanged."
)
FIX_SERVER_ERROR = (
    "Synapse failed while answering a signed federation request; its log "
    "(grep for `state_ids`) says why."
)
FIX_UNREACHABLE = (
    "The signed request could not be sent: see `connection.reachable` and "
    "`tls.*` for this address."
)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class SignedRequest:
    """A signed federation request, ready to send to each target."""

    method: str
    path: str  # path and query, exactly as sent and signed
    authorization: str  # the X-Matrix header value
    key_id: str
    room_id: str
    event_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.authorization}


def probe_ids(server_name: str, token: str) -> tuple[str, str]:
    """(room id, event id) that name no real room or event."""
    return f"!{PROBE_ID_PREFIX}{token}:{server_name}", f"${PROBE_ID_PREFIX}{token}"


def state_ids_path(room_id: str, event_id: str) -> str:
    """Encoded like Synapse's federation client: `quote(arg, safe="")` for the
    path segment (transport/client.py `_create_v1_path`) and `urlencode` for
    the query (matrixfederationclient.py `encode_query_args`)."""
    return (
        STATE_IDS_PREFIX
        + urllib.parse.quote(room_id, safe="")
        + "?"
        + urllib.parse.urlencode({"event_id": event_id})
    )


def build_signed_request(
    key: SigningKeyInfo, server_name: str, *, token: str | None = None
) -> SignedRequest:
    """The probe request, signed with `key` as `server_name` (origin and
    destination). Raises ValueError when the snapshot holds no private key."""
    if key.signing_key is None:
        raise ValueError(f"no private key loaded for {key.key_id}")
    token = token if token is not None else secrets.token_hex(PROBE_TOKEN_BYTES)
    room_id, event_id = probe_ids(server_name, token)
    path = state_ids_path(room_id, event_id)
    auth = sign_request(
        key.signing_key,
        origin=server_name,
        destination=server_name,
        method="GET",
        uri=path,
    )
    return SignedRequest(
        method="GET",
        path=path,
        authorization=format_xmatrix_header(auth[0]),
        key_id=key.key_id,
        room_id=room_id,
        event_id=event_id,
    )


def signed_request_precheck(snapshot: HomeserverSnapshot) -> CheckResult | None:
    """A `skip` when the check can't run for this server, else None."""
    if not snapshot.signing_keys or snapshot.signing_keys[0].signing_key is None:
        return skip(
            SIGNED_REQUEST,
            "skipped: no signing key is loaded, so no request can be signed",
        )
    whitelist = snapshot.federation_domain_whitelist
    if whitelist is not None and snapshot.server_name not in whitelist:
        return skip(
            SIGNED_REQUEST,
            "skipped: federation_domain_whitelist does not list this server's "
            "own name, and Synapse refuses unlisted origins before it checks "
            "the signature",
            details={"reason": "whitelist"},
        )
    return None


# Synapse's 401/400 texts, the marker that identifies each, and what it means
# (see the table in the module docstring): (marker, reason, summary, fix).
_AUTH_FAILURES: tuple[tuple[str, str, str, Callable[[str, str], str]], ...] = (
    (
        "invalid signature",
        "uri_rewritten",
        "Synapse rejected our signature ({quoted}): the proxy rewrites the request URI",
        lambda server_name, key_id: FIX_URI_REWRITTEN,
    ),
    (
        "destination",
        "destination_mismatch",
        "the server behind this address is not {server_name} ({quoted})",
        lambda server_name, key_id: FIX_DESTINATION.format(server_name=server_name),
    ),
    (
        "missing authorization",
        "authorization_dropped",
        "the Authorization header did not reach Synapse ({quoted})",
        lambda server_name, key_id: FIX_NO_AUTH_HEADER,
    ),
    (
        "malformed authorization",
        "authorization_altered",
        "the Authorization header reached Synapse altered ({quoted})",
        lambda server_name, key_id: FIX_MALFORMED_AUTH,
    ),
    (
        "failed to find any key",
        "key_unknown",
        "the server behind this address does not know our key ({quoted})",
        lambda server_name, key_id: FIX_NO_KEY.format(key_id=key_id),
    ),
)


def _auth_failure(
    status: int,
    errcode: str,
    error: str,
    *,
    server_name: str,
    key_id: str | None,
    details: dict[str, Any],
    target: str | None,
) -> CheckResult:
    lowered = error.lower()
    quoted = f"{status} {errcode} {error[:ERROR_MESSAGE_CHARS]!r}"
    for marker, reason, summary, fix in _AUTH_FAILURES:
        if marker in lowered:
            details["reason"] = reason
            return fail(
                SIGNED_REQUEST,
                summary.format(quoted=quoted, server_name=server_name),
                fix=fix(server_name, key_id or "(our key)"),
                details=details,
                target=target,
            )
    details["reason"] = "rejected"
    return fail(
        SIGNED_REQUEST,
        f"Synapse refused the signed request: {quoted}",
        fix=FIX_OTHER_401,
        details=details,
        target=target,
    )


def judge_signed_request(
    status: int,
    headers: Headers,
    body: bytes,
    *,
    server_name: str,
    request: Mapping[str, Any],
    key_id: str | None = None,
    target: str | None = None,
) -> CheckResult:
    """Judge the answer to the signed probe request. Never raises."""
    details = request_details(request, http_status=status)
    error = matrix_error(body)
    if error is None:
        obj, _ = parse_json_object(body)
        if 200 <= status < 300 and obj is not None:
            # Only reachable if the probe room existed and we were in it.
            details["auth_passed"] = True
            return ok(
                SIGNED_REQUEST,
                f"signature accepted: Synapse answered {status}",
                details=details,
                target=target,
            )
        details["reason"] = "not_synapse"
        details["auth_passed"] = None
        return fail(
            SIGNED_REQUEST,
            "the signed request was not answered by Synapse's federation API: "
            + describe_answer(status, headers, body),
            fix=FIX_NOT_SYNAPSE,
            details=details,
            target=target,
        )

    errcode, message = error
    details["errcode"] = errcode
    details["error"] = message[:ERROR_MESSAGE_CHARS]
    if errcode == "M_UNRECOGNIZED":
        details["reason"] = "not_served"
        details["auth_passed"] = None
        return fail(
            SIGNED_REQUEST,
            f"this address does not serve the federation API ({status} {errcode})",
            fix=FIX_NOT_SERVED,
            details=details,
            target=target,
        )
    if status == 401 or (status == 400 and errcode == "M_UNAUTHORIZED"):
        details["auth_passed"] = False
        return _auth_failure(
            status,
            errcode,
            message,
            server_name=server_name,
            key_id=key_id,
            details=details,
            target=target,
        )
    if status == 403 and message.startswith("Federation denied"):
        details["reason"] = "whitelist"
        details["auth_passed"] = None
        return skip(
            SIGNED_REQUEST,
            "inconclusive: the server's federation_domain_whitelist refuses "
            f"{server_name} itself before checking the signature",
            details=details,
            target=target,
        )
    if status >= 500:
        details["reason"] = "server_error"
        details["auth_passed"] = None
        return warn(
            SIGNED_REQUEST,
            f"inconclusive: Synapse answered {status} {errcode} "
            f"{message[:ERROR_MESSAGE_CHARS]!r} to the signed request",
            fix=FIX_SERVER_ERROR,
            details=details,
            target=target,
        )
    # Synapse authenticates before it routes the request to the handler:
    # any other Matrix error comes from after a successful signature check.
    details["auth_passed"] = True
    return ok(
        SIGNED_REQUEST,
        f"signature accepted: Synapse authenticated the request, then answered "
        f"{status} {errcode} as expected for a room we are not in",
        details=details,
        target=target,
    )


def judge_signed_request_error(
    reason: str,
    message: str,
    *,
    request: Mapping[str, Any],
    target: str | None = None,
) -> CheckResult:
    """The request got no HTTP answer (`reason`: "timeout", "refused", ...)."""
    details = request_details(request, reason=reason)
    if message:
        details["error"] = message[:ERROR_MESSAGE_CHARS]
    if reason == "timeout":
        return fail(
            SIGNED_REQUEST,
            "the signed request timed out",
            fix=FIX_UNREACHABLE,
            details=details,
            target=target,
        )
    return fail(
        SIGNED_REQUEST,
        f"the signed request could not be sent ({reason}"
        + (f": {message[:ERROR_MESSAGE_CHARS]}" if message else "")
        + ")",
        fix=FIX_UNREACHABLE,
        details=details,
        target=target,
    )
