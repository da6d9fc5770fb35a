"""Keys and signatures (synapse_fedhealth.signing) on real signedjson keys
and on hostile key answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from signedjson.key import decode_verify_key_base64
from signedjson.sign import sign_json, verify_signed_json

from synapse_fedhealth.signing import (
    canonical_json,
    decode_base64,
    is_ed25519_key_id,
    parse_served_keys,
    served_key_map,
    sign,
    signature_key_ids,
    signature_verifies,
    signature_verifies_with_bytes,
)
from tests.hypothesis_settings import PROPERTY_SETTINGS
from tests.unit.insider_helpers import SERVER_NAME, json_values, key_response, make_key

KEY = make_key("a_AbCd")
VERIFY_KEY = decode_verify_key_base64("ed25519", "a_AbCd", KEY.verify_key_base64)
KEY_BYTES = decode_base64(KEY.verify_key_base64)
VALID = 1_900_000_000_000


def signed_response(**extra: Any) -> dict[str, Any]:
    return key_response(SERVER_NAME, KEY, valid_until_ts=VALID) | extra


def test_canonical_json_is_matrix_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": ["é", 1.5, None]}) == (
        '{"a":["é",1.5,null],"b":1}'.encode()
    )


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), 10**5000, "\ud800", {1: "x", "a": 2}, object()],
    ids=["nan", "infinity", "huge_int", "lone_surrogate", "mixed_keys", "object"],
)
def test_canonical_json_refuses_what_has_no_canonical_form(value: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        canonical_json({"x": value})


def test_key_ids() -> None:
    assert is_ed25519_key_id("ed25519:a_AbCd")
    for value in ("ed25519", "curve25519:a", "ED25519:a", "", None, 5):
        assert not is_ed25519_key_id(value)


def test_base64_as_synapse_decodes_it() -> None:
    raw = b"\xfb\xff\x00" * 11
    assert decode_base64("+/8A" * 11) == raw
    assert decode_base64("-_8A" * 11) == raw  # URL-safe
    assert decode_base64(KEY.verify_key_base64 + "=") == KEY_BYTES
    for bad in ("A", "AAAAA", "é", 5, None, b"AAAA"):
        assert decode_base64(bad) is None


def test_served_key_map_ignores_wrong_shapes() -> None:
    section = {
        KEY.key_id: {"key": KEY.verify_key_base64},
        "ed25519:bad": {"key": "A"},
        "ed25519:list": ["x"],
        5: {"key": KEY.verify_key_base64},
    }
    assert served_key_map(section) == {
        KEY.key_id: KEY_BYTES,
        "ed25519:bad": None,
        "ed25519:list": None,
    }
    assert served_key_map(["x"]) == {}


def test_sign_verifies_with_signedjson_and_leaves_the_object_alone() -> None:
    obj = {"method": "GET", "uri": "/x", "signatures": {"other": {"k": "s"}}}
    signatures = sign(obj, SERVER_NAME, KEY.signing_key)
    assert obj == {"method": "GET", "uri": "/x", "signatures": {"other": {"k": "s"}}}
    assert list(signatures) == [KEY.key_id]
    signed = {"method": "GET", "uri": "/x", "signatures": {SERVER_NAME: signatures}}
    verify_signed_json(signed, SERVER_NAME, VERIFY_KEY)
    assert signature_verifies(signed, SERVER_NAME, VERIFY_KEY)
    assert signature_key_ids(signed, SERVER_NAME) == [KEY.key_id]


def test_a_signedjson_signature_over_any_json_verifies() -> None:
    # Floats and non-ASCII text have a canonical form: Synapse signs them.
    obj = sign_json(
        {"a": 1.5, "é": ["ü", -0.0, 10**4000]}, SERVER_NAME, KEY.signing_key
    )
    assert signature_verifies(obj, SERVER_NAME, VERIFY_KEY)
    assert KEY_BYTES is not None
    assert signature_verifies_with_bytes(obj, SERVER_NAME, KEY.key_id, KEY_BYTES)
    assert not signature_verifies(obj, "other.example", VERIFY_KEY)
    assert not signature_verifies_with_bytes(obj, SERVER_NAME, "x:a_AbCd", KEY_BYTES)
    assert not signature_verifies_with_bytes(obj, SERVER_NAME, KEY.key_id, b"\0" * 31)


@pytest.mark.parametrize(
    "signatures",
    [
        None,
        ["x"],
        "x",
        {SERVER_NAME: ["x"]},
        {SERVER_NAME: "x"},
        {SERVER_NAME: {KEY.key_id: 5}},
        {SERVER_NAME: {KEY.key_id: "é"}},
        {SERVER_NAME: {KEY.key_id: "A"}},
        {SERVER_NAME: {KEY.key_id: "AAAA"}},
    ],
)
def test_signatures_of_any_shape_do_not_verify(signatures: Any) -> None:
    obj = signed_response()
    obj["signatures"] = signatures
    assert not signature_verifies(obj, SERVER_NAME, VERIFY_KEY)
    served = parse_served_keys("a", obj)
    assert [(k.valid_key, k.signature_ok) for k in served.key_checks] == [(True, False)]


@pytest.mark.parametrize(
    "extra",
    [float("nan"), float("-inf"), "\ud800", ["\udfff"], {1: "x", "a": 2}],
    ids=["nan", "infinity", "lone_surrogate", "surrogate_list", "mixed_keys"],
)
def test_signed_content_without_canonical_form_does_not_verify(extra: Any) -> None:
    obj = signed_response(extra=extra)
    assert not signature_verifies(obj, SERVER_NAME, VERIFY_KEY)
    served = parse_served_keys("a", obj)
    assert [(k.valid_key, k.signature_ok) for k in served.key_checks] == [(True, False)]
    json.dumps(served.raw, allow_nan=False)


@pytest.mark.parametrize(
    "key",
    ["A", "é", KEY.verify_key_base64[:-2], KEY.verify_key_base64 + "AAAA", 5, None],
    ids=["bad_base64", "non_ascii", "short", "long", "int", "null"],
)
def test_undecodable_or_wrong_length_key_is_invalid(key: Any) -> None:
    obj = signed_response()
    obj["verify_keys"][KEY.key_id]["key"] = key
    served = parse_served_keys("a", obj)
    assert [(k.valid_key, k.signature_ok) for k in served.key_checks] == [
        (False, False)
    ]
    assert served.ed25519_keys == {}


def test_parsed_answer() -> None:
    served = parse_served_keys("203.0.113.7:8448", signed_response())
    assert served.server_name == SERVER_NAME
    assert served.valid_until_ts == VALID
    assert served.ed25519_keys == {KEY.key_id: KEY.verify_key_base64}
    assert served.federation_tester_checks(SERVER_NAME, VALID - 1)["AllChecksOK"]
    for valid_until in (True, 1.9e12, str(VALID), None):
        assert (
            parse_served_keys("a", {"valid_until_ts": valid_until}).valid_until_ts
            is None
        )


# Every key answer is remote input: test_remote_input_properties.py's
# test_key_answers runs the parser on 10,000 of them in CI; this one adds
# objects of any shape at the usual count.
@PROPERTY_SETTINGS
@given(obj=st.dictionaries(st.text(max_size=12), json_values, max_size=5))
def test_property_any_object_is_a_plain_answer(obj: dict[str, Any]) -> None:
    assert not signature_verifies(obj, SERVER_NAME, VERIFY_KEY)
    assert KEY_BYTES is not None
    assert not signature_verifies_with_bytes(obj, SERVER_NAME, KEY.key_id, KEY_BYTES)
    signature_key_ids(obj, SERVER_NAME)
    served_key_map(obj.get("verify_keys"))
    parse_served_keys("a", obj)
