"""federation.signed_request: our X-Matrix header passes Synapse's own
parser and signature check; Synapse's answers are classified right."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import attr
import pytest
from hypothesis import given
from hypothesis import strategies as st
from signedjson.key import decode_verify_key_base64
from signedjson.sign import SignatureVerifyException, verify_signed_json
from synapse.api.errors import SynapseError
from synapse.crypto.keyring import VerifyJsonRequest
from synapse.federation.transport.server._base import (
    AuthenticationError,
    Authenticator,
    _parse_auth_header,
)
from twisted.internet import defer
from twisted.web.http_headers import Headers

from synapse_fedhealth.checks.signed_request import (
    SIGNED_REQUEST,
    build_signed_request,
    judge_signed_request,
    judge_signed_request_error,
    signed_request_precheck,
    state_ids_path,
)
from synapse_fedhealth.checks.xmatrix import (
    XMatrixAuth,
    format_xmatrix_header,
    parse_xmatrix_header,
)
from synapse_fedhealth.homeserver import HomeserverSnapshot, SigningKeyInfo
from synapse_fedhealth.report import CheckResult, Status
from tests.hypothesis_settings import REMOTE_INPUT_SETTINGS
from tests.unit.insider_helpers import PROPERTY_SETTINGS, REQUEST, SERVER_NAME, make_key
from tests.unit.synapse_releases import keyring_process_json

KEY = make_key()


def synapse_view(
    header: str, method: str, uri: str, destination: str
) -> dict[str, Any]:
    """The object Synapse's Authenticator verifies (_base.py:83-108)."""
    origin, key, sig, dest = _parse_auth_header(header.encode("ascii"))
    assert dest == destination
    return {
        "method": method,
        "uri": uri,
        "destination": destination,
        "origin": origin,
        "signatures": {origin: {key: sig}},
    }


def verify_key_of(key: SigningKeyInfo) -> Any:
    return decode_verify_key_base64(
        "ed25519", key.key_id.split(":", 1)[1], key.verify_key_base64
    )


def test_header_verifies_with_synapse_parser_and_signedjson() -> None:
    req = build_signed_request(KEY, SERVER_NAME, token="abc123")
    assert req.method == "GET"
    assert req.path == (
        "/_matrix/federation/v1/state_ids/%21fedhealth-probe-abc123%3Aexample.com"
        "?event_id=%24fedhealth-probe-abc123"
    )
    assert req.headers == {"Authorization": req.authorization}
    origin, key_id, _, destination = _parse_auth_header(req.authorization.encode())
    assert (origin, key_id, destination) == (SERVER_NAME, KEY.key_id, SERVER_NAME)
    verify_signed_json(
        synapse_view(req.authorization, "GET", req.path, SERVER_NAME),
        SERVER_NAME,
        verify_key_of(KEY),
    )


def test_header_layout_is_synapses() -> None:
    req = build_signed_request(KEY, SERVER_NAME, token="t")
    assert req.authorization.startswith(
        f'X-Matrix origin="{SERVER_NAME}",key="{KEY.key_id}",sig="'
    )
    assert req.authorization.endswith(f',destination="{SERVER_NAME}"')


def test_a_decoded_uri_breaks_the_signature() -> None:
    """What a `proxy_pass http://host:8008/;` does to the request."""
    req = build_signed_request(KEY, SERVER_NAME, token="t")
    rewritten = urllib.parse.unquote(req.path)
    assert rewritten != req.path
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(
            synapse_view(req.authorization, "GET", rewritten, SERVER_NAME),
            SERVER_NAME,
            verify_key_of(KEY),
        )


@pytest.mark.parametrize(
    "server_name", ["example.com:8448", "[::1]:8448", "1.2.3.4", "a-b.c"]
)
def test_server_names_with_ports_and_literals(server_name: str) -> None:
    req = build_signed_request(KEY, server_name, token="x")
    assert "%3A" in req.path and "%21" in req.path and "%24" in req.path
    verify_signed_json(
        synapse_view(req.authorization, "GET", req.path, server_name),
        server_name,
        verify_key_of(KEY),
    )


def test_state_ids_path_encodes_like_synapse() -> None:
    from synapse.federation.transport.client import _create_v1_path
    from synapse.http.client import encode_query_args

    room, event = "!r:ex.com", "$e/+ x"
    expected = (
        _create_v1_path("/state_ids/%s", room)
        + "?"
        + encode_query_args({"event_id": event}).decode()
    )
    assert state_ids_path(room, event) == expected


def test_build_without_private_key_raises() -> None:
    with pytest.raises(ValueError):
        build_signed_request(attr.evolve(KEY, signing_key=None), SERVER_NAME)


# --- Synapse's real Authenticator on our request ----------------------------


class _FakeStore:
    async def get_destination_retry_timings(self, origin: str) -> None:
        return None


class _RealSignatureKeyring:
    """Verifies with Synapse's own `Keyring.process_json`, which raises the
    exact 401 "Invalid signature ..." SynapseError (keyring.py:416-426)."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self._keys = keys

    async def verify_json_for_server(self, server_name: str, obj: Any, ts: int) -> None:
        request = VerifyJsonRequest.from_json_object(server_name, obj, ts)
        for key_id in request.key_ids:
            await keyring_process_json()(None, self._keys[key_id], request)


class _FakeHs:
    def __init__(self, hostname: str, keys: dict[str, Any]) -> None:
        self.hostname = hostname
        self._keyring = _RealSignatureKeyring(keys)
        self.config = _Obj(
            federation=_Obj(federation_domain_whitelist=None),
            worker=_Obj(worker_app=None),
        )

    def get_clock(self) -> Any:
        return _Obj(time_msec=lambda: 0)

    def get_keyring(self) -> Any:
        return self._keyring

    def is_mine_server_name(self, name: str) -> bool:
        return name == self.hostname

    def get_datastores(self) -> Any:
        return _Obj(main=_FakeStore())

    def get_notifier(self) -> Any:
        return None


class _Obj:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class _FakeRequest:
    def __init__(self, method: bytes, uri: bytes, authorization: str | None) -> None:
        self.method = method
        self.uri = uri
        self.requestHeaders = Headers()
        if authorization is not None:
            self.requestHeaders.addRawHeader(b"Authorization", authorization.encode())
        self.requester: str | None = None


def authenticate(
    hostname: str, uri: str, authorization: str | None
) -> SynapseError | str:
    """Run Synapse's Authenticator; the origin, or the error it raises."""
    auth = Authenticator(_FakeHs(hostname, {KEY.key_id: verify_key_of(KEY)}))  # type: ignore[arg-type]
    request = _FakeRequest(b"GET", uri.encode(), authorization)
    d = defer.ensureDeferred(auth.authenticate_request(request, None))  # type: ignore[arg-type]
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "authenticate_request did not complete synchronously"
    outcome = results[0]
    if isinstance(outcome, str):
        return outcome
    assert isinstance(outcome.value, SynapseError)
    return outcome.value


def answer_of(error: SynapseError) -> tuple[int, bytes]:
    return error.code, json.dumps(error.error_dict(None)).encode()


def test_synapse_authenticator_accepts_our_request() -> None:
    req = build_signed_request(KEY, SERVER_NAME)
    assert authenticate(SERVER_NAME, req.path, req.authorization) == SERVER_NAME


def test_synapse_rejection_of_a_rewritten_uri_is_classified() -> None:
    req = build_signed_request(KEY, SERVER_NAME)
    error = authenticate(SERVER_NAME, urllib.parse.unquote(req.path), req.authorization)
    assert isinstance(error, SynapseError)
    status, body = answer_of(error)
    assert status == 401
    result = judge_signed_request(
        status, {}, body, server_name=SERVER_NAME, request=REQUEST
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == "uri_rewritten"
    assert "proxy_pass http://127.0.0.1:8008;" in (result.fix or "")


def test_synapse_destination_mismatch_is_classified() -> None:
    req = build_signed_request(KEY, SERVER_NAME)
    error = authenticate("other.example", req.path, req.authorization)
    assert isinstance(error, AuthenticationError)
    status, body = answer_of(error)
    result = judge_signed_request(
        status, {}, body, server_name=SERVER_NAME, request=REQUEST
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == "destination_mismatch"


def test_synapse_missing_header_is_classified() -> None:
    req = build_signed_request(KEY, SERVER_NAME)
    error = authenticate(SERVER_NAME, req.path, None)
    assert isinstance(error, SynapseError)
    status, body = answer_of(error)
    result = judge_signed_request(
        status, {}, body, server_name=SERVER_NAME, request=REQUEST
    )
    assert result.details["reason"] == "authorization_dropped"


def test_synapse_malformed_header_is_classified() -> None:
    req = build_signed_request(KEY, SERVER_NAME)
    error = authenticate(SERVER_NAME, req.path, "X-Matrix garbage")
    assert isinstance(error, SynapseError)
    status, body = answer_of(error)
    assert status == 400
    result = judge_signed_request(
        status, {}, body, server_name=SERVER_NAME, request=REQUEST
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == "authorization_altered"


# --- classification table ----------------------------------------------------


def _err(errcode: str, error: str) -> bytes:
    return json.dumps({"errcode": errcode, "error": error}).encode()


HTML = {"content-type": ["text/html"], "server": ["nginx/1.22.1"]}

CASES: list[tuple[str, int, dict[str, list[str]], bytes, Status, str | None]] = [
    (
        "host not in room",
        403,
        {},
        _err("M_FORBIDDEN", "Host not in room."),
        Status.OK,
        None,
    ),
    (
        "partial state",
        403,
        {},
        _err("M_UNABLE_DUE_TO_PARTIAL_STATE", "x"),
        Status.OK,
        None,
    ),
    ("not found", 404, {}, _err("M_NOT_FOUND", "Unknown room"), Status.OK, None),
    ("rate limited", 429, {}, _err("M_LIMIT_EXCEEDED", "slow down"), Status.OK, None),
    ("200 json", 200, {}, b'{"pdu_ids": [], "auth_chain_ids": []}', Status.OK, None),
    (
        "invalid signature",
        401,
        {},
        _err(
            "M_UNAUTHORIZED",
            "Invalid signature for server example.com with key ed25519:a: x",
        ),
        Status.FAIL,
        "uri_rewritten",
    ),
    (
        "destination",
        401,
        {},
        _err("M_UNAUTHORIZED", "Destination mismatch in auth header, received: 'x'"),
        Status.FAIL,
        "destination_mismatch",
    ),
    (
        "no key",
        401,
        {},
        _err(
            "M_UNAUTHORIZED", "Failed to find any key to satisfy: _FetchKeyRequest(...)"
        ),
        Status.FAIL,
        "key_unknown",
    ),
    (
        "other 401",
        401,
        {},
        _err("M_UNAUTHORIZED", "Something else"),
        Status.FAIL,
        "rejected",
    ),
    (
        "unrecognized",
        404,
        {},
        _err("M_UNRECOGNIZED", "Unrecognized request"),
        Status.FAIL,
        "not_served",
    ),
    (
        "html 404",
        404,
        HTML,
        b"<html><title>404 Not Found</title></html>",
        Status.FAIL,
        "not_synapse",
    ),
    ("502", 502, HTML, b"<html>502 Bad Gateway</html>", Status.FAIL, "not_synapse"),
    ("empty 200", 200, {}, b"", Status.FAIL, "not_synapse"),
    (
        "whitelist",
        403,
        {},
        _err("M_FORBIDDEN", "Federation denied with example.com."),
        Status.SKIP,
        "whitelist",
    ),
    (
        "500",
        500,
        {},
        _err("M_UNKNOWN", "Internal server error"),
        Status.WARN,
        "server_error",
    ),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_classification(
    status: int,
    headers: dict[str, list[str]],
    body: bytes,
    expected: Status,
    reason: str | None,
) -> None:
    result = judge_signed_request(
        status,
        headers,
        body,
        server_name=SERVER_NAME,
        request=REQUEST,
        target="203.0.113.7:443",
    )
    assert result.id == SIGNED_REQUEST
    assert result.status is expected
    assert result.details.get("reason") == reason
    assert result.target == "203.0.113.7:443"
    for field in ("url", "host_header", "sni"):
        assert result.details[field] == REQUEST[field]
    if expected in (Status.WARN, Status.FAIL):
        assert result.fix


def test_html_answer_says_who_answered() -> None:
    result = judge_signed_request(
        502,
        HTML,
        b"<html>502 Bad Gateway</html>",
        server_name=SERVER_NAME,
        request=REQUEST,
    )
    assert "502" in result.summary and "nginx" in result.summary


def test_timeout_is_a_fail_with_reason_timeout() -> None:
    result = judge_signed_request_error("timeout", "", request=REQUEST)
    assert result.status is Status.FAIL
    assert result.details["reason"] == "timeout"
    assert "timed out" in result.summary
    assert result.details["url"] == REQUEST["url"]


def test_connection_error_is_a_fail() -> None:
    result = judge_signed_request_error(
        "refused", "Connection refused", request=REQUEST
    )
    assert result.status is Status.FAIL
    assert "refused" in result.summary


def _snapshot(**kw: Any) -> HomeserverSnapshot:
    return HomeserverSnapshot(
        server_name=SERVER_NAME, public_baseurl=None, listeners=(), **kw
    )


def test_precheck() -> None:
    assert signed_request_precheck(_snapshot(signing_keys=(KEY,))) is None
    no_key = signed_request_precheck(_snapshot())
    assert no_key is not None and no_key.status is Status.SKIP
    listed = _snapshot(signing_keys=(KEY,), federation_domain_whitelist=(SERVER_NAME,))
    assert signed_request_precheck(listed) is None
    unlisted = _snapshot(
        signing_keys=(KEY,), federation_domain_whitelist=("other.org",)
    )
    result = signed_request_precheck(unlisted)
    assert result is not None and result.status is Status.SKIP


# --- properties ---------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
server_names = st.builds(
    lambda labels, port: ".".join(labels) + (f":{port}" if port else ""),
    st.lists(_label, min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(1, 65535)),
)


@PROPERTY_SETTINGS
@given(
    server_name=server_names,
    token=st.from_regex(r"[A-Za-z0-9_.~-]{1,20}", fullmatch=True),
)
def test_property_built_header_verifies_in_synapse(
    server_name: str, token: str
) -> None:
    req = build_signed_request(KEY, server_name, token=token)
    verify_signed_json(
        synapse_view(req.authorization, "GET", req.path, server_name),
        server_name,
        verify_key_of(KEY),
    )
    parsed = parse_xmatrix_header(req.authorization)
    assert parsed == XMatrixAuth(
        origin=server_name,
        key=KEY.key_id,
        sig=parsed.sig if parsed else "",
        destination=server_name,
    )


_any_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@PROPERTY_SETTINGS
@given(
    origin=_any_value,
    key=_any_value,
    sig=_any_value,
    destination=st.none() | _any_value,
)
def test_property_format_parse_round_trip(
    origin: str, key: str, sig: str, destination: str | None
) -> None:
    auth = XMatrixAuth(origin=origin, key=key, sig=sig, destination=destination)
    header = format_xmatrix_header(auth)
    assert parse_xmatrix_header(header) == auth


_plain = st.from_regex(r"[A-Za-z0-9+/=:._-]{1,30}", fullmatch=True)


@PROPERTY_SETTINGS
@given(origin=server_names, key=_plain, sig=_plain, destination=server_names)
def test_property_synapse_reads_what_we_write(
    origin: str, key: str, sig: str, destination: str
) -> None:
    header = format_xmatrix_header(
        XMatrixAuth(origin=origin, key=key, sig=sig, destination=destination)
    )
    assert _parse_auth_header(header.encode("ascii")) == (origin, key, sig, destination)


@REMOTE_INPUT_SETTINGS
@given(st.text(max_size=200))
def test_property_parser_never_raises(text: str) -> None:
    result = parse_xmatrix_header(text)
    assert result is None or isinstance(result, XMatrixAuth)
    parse_xmatrix_header("X-Matrix " + text)


@PROPERTY_SETTINGS
@given(
    status=st.integers(0, 999),
    headers=st.dictionaries(
        st.text(max_size=10), st.lists(st.text(max_size=10), max_size=2)
    ),
    body=st.binary(max_size=300)
    | st.builds(
        lambda v: json.dumps(v).encode(),
        st.dictionaries(
            st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=4
        ),
    ),
)
def test_property_judge_never_raises(
    status: int, headers: dict[str, list[str]], body: bytes
) -> None:
    result = judge_signed_request(
        status, headers, body, server_name=SERVER_NAME, request=REQUEST
    )
    assert isinstance(result, CheckResult)
    assert result.status is Status.SKIP or result.status is Status.OK or result.fix
