"""federation.version and federation.keys on canned answers."""

from __future__ import annotations

import base64
import json
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from canonicaljson import encode_canonical_json
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from synapse.rest.key.v2.local_key_resource import LocalKey

from synapse_fedhealth.checks.discovery import Target
from synapse_fedhealth.checks.federation import check_keys, check_version
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.report import Status
from synapse_fedhealth.signing import canonical_json

SERVER = "example.com"
TARGET = Target(
    ip="203.0.113.7",
    port=8448,
    host_header=SERVER,
    sni=SERVER,
    hostname=SERVER,
    source="test",
)
NOW_MS = int(time.time() * 1000)
HOUR_MS = 3600 * 1000


def answer(
    body: bytes | dict[str, Any],
    status: int | None = 200,
    ctype: str = "application/json",
    **kw: Any,
) -> HttpResult:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResult(
        url=f"https://{SERVER}/x",
        host_header=SERVER,
        sni=SERVER,
        status=status,
        body=raw,
        headers={"content-type": (ctype,)},
        **kw,
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def signed_keys(
    server_name: str = SERVER, valid_for_ms: int = 24 * HOUR_MS, tamper: bool = False
) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    body: dict[str, Any] = {
        "server_name": server_name,
        "valid_until_ts": NOW_MS + valid_for_ms,
        "verify_keys": {
            "ed25519:a": {
                "key": b64(
                    key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                )
            }
        },
        "old_verify_keys": {},
    }
    body["signatures"] = {
        server_name: {"ed25519:a": b64(key.sign(canonical_json(body)))}
    }
    if tamper:
        body["old_verify_keys"] = {"ed25519:x": {"key": "AAAA", "expired_ts": 1}}
    return body


def test_version_ok() -> None:
    result, version = check_version(
        TARGET, answer({"server": {"name": "Synapse", "version": "1.163.2"}})
    )
    assert result.status is Status.OK
    assert version == {"name": "Synapse", "version": "1.163.2"}
    assert result.target == TARGET.address
    assert {"url", "host_header", "sni"} <= set(result.details)


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (404, "does not serve federation"),
        (502, "upstream"),
        (503, "upstream"),
        (504, "upstream"),
        (301, "redirect"),
        (418, "HTTP 418"),
    ],
)
def test_version_statuses_say_which(status: int, words: str) -> None:
    result, _ = check_version(TARGET, answer(b"", status=status))
    assert result.status is Status.FAIL
    assert words in result.summary


def test_version_timeout() -> None:
    result, _ = check_version(
        TARGET, answer(b"", status=None, error="timeout", error_message="timed out")
    )
    assert result.details["reason"] == "timeout"
    assert "timed out" in result.summary


@given(st.binary(max_size=200))
def test_version_hostile_bodies(body: bytes) -> None:
    result, _ = check_version(TARGET, answer(body))
    assert result.status in (Status.OK, Status.FAIL)


def test_keys_ok() -> None:
    result, served = check_keys(TARGET, answer(signed_keys()), SERVER, now_ms=NOW_MS)
    assert result.status is Status.OK, result.summary
    assert served is not None and "ed25519:a" in served.ed25519_keys
    assert served.federation_tester_checks(SERVER, NOW_MS)["AllChecksOK"] is True


def test_keys_of_another_server_fail() -> None:
    result, served = check_keys(
        TARGET, answer(signed_keys("other.example.org")), SERVER, now_ms=NOW_MS
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == "wrong_server_name"
    assert served is not None


def test_keys_bad_signature_fails() -> None:
    result, _ = check_keys(
        TARGET, answer(signed_keys(tamper=True)), SERVER, now_ms=NOW_MS
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == "bad_signature"


def test_keys_expired_fails() -> None:
    result, _ = check_keys(
        TARGET, answer(signed_keys(valid_for_ms=-HOUR_MS)), SERVER, now_ms=NOW_MS
    )
    assert result.details["reason"] == "expired_keys"


@pytest.mark.parametrize("valid_for_ms", [HOUR_MS // 2, 8 * 24 * HOUR_MS])
def test_keys_validity_window_warns(valid_for_ms: int) -> None:
    result, _ = check_keys(
        TARGET, answer(signed_keys(valid_for_ms=valid_for_ms)), SERVER, now_ms=NOW_MS
    )
    assert result.status is Status.WARN


def test_keys_content_type_warns() -> None:
    result, _ = check_keys(
        TARGET, answer(signed_keys(), ctype="text/html"), SERVER, now_ms=NOW_MS
    )
    assert result.status is Status.WARN


def test_keys_without_ed25519_fail() -> None:
    body = signed_keys()
    body["verify_keys"] = {}
    result, _ = check_keys(TARGET, answer(body), SERVER, now_ms=NOW_MS)
    assert result.details["reason"] == "no_key"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_keys_any_json_shape(value: Any) -> None:
    result, _ = check_keys(
        TARGET, answer(json.dumps(value).encode()), SERVER, now_ms=NOW_MS
    )
    assert result.status is Status.FAIL


@given(
    st.dictionaries(
        st.sampled_from(["server_name", "valid_until_ts", "verify_keys", "signatures"]),
        json_values,
    )
)
def test_keys_any_field_types(fields: dict[str, Any]) -> None:
    check_keys(TARGET, answer(json.dumps(fields).encode()), SERVER, now_ms=NOW_MS)


def synapse_key_answer(signing_keys: list[Any], old_key: Any) -> bytes:
    """The bytes Synapse itself serves at /_matrix/key/v2/server: its own
    `LocalKey` servlet (rest/key/v2/local_key_resource.py) builds and signs
    the object, and `KeyResource` encodes it as canonical JSON."""
    key_config = SimpleNamespace(
        signing_key=signing_keys,
        old_signing_keys={f"ed25519:{old_key.version}": old_key},
        key_refresh_interval=24 * HOUR_MS,
    )
    hs = SimpleNamespace(
        config=SimpleNamespace(
            key=key_config, server=SimpleNamespace(server_name=SERVER)
        ),
        get_clock=lambda: SimpleNamespace(time_msec=lambda: NOW_MS),
    )
    resource = LocalKey(cast(Any, hs))
    encoded: bytes = encode_canonical_json(resource.response_body)
    return encoded


def _old_verify_key() -> Any:
    old: Any = get_verify_key(generate_signing_key("a_old"))
    old.expired = NOW_MS - HOUR_MS
    return old


def test_keys_signed_by_synapse_verify() -> None:
    keys = [generate_signing_key("a_one"), generate_signing_key("a_two")]
    result, served = check_keys(
        TARGET,
        answer(synapse_key_answer(keys, _old_verify_key())),
        SERVER,
        now_ms=NOW_MS,
    )
    assert result.status is Status.OK, result.summary
    assert served is not None
    assert [(k.key_id, k.valid_key, k.signature_ok) for k in served.key_checks] == [
        ("ed25519:a_one", True, True),
        ("ed25519:a_two", True, True),
    ]


def test_keys_signed_by_synapse_with_one_byte_changed_fail() -> None:
    old = _old_verify_key()
    body = synapse_key_answer([generate_signing_key("a_one")], old)
    old_b64 = encode_verify_key_base64(old).encode()
    assert body.count(old_b64) == 1
    # Still a valid key of the right length, only the signed content differs.
    changed = old_b64[:-2] + (b"B" if old_b64[-2:-1] != b"B" else b"C") + old_b64[-1:]
    result, served = check_keys(
        TARGET, answer(body.replace(old_b64, changed)), SERVER, now_ms=NOW_MS
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == "bad_signature"
    assert served is not None
    assert [(k.valid_key, k.signature_ok) for k in served.key_checks] == [(True, False)]
