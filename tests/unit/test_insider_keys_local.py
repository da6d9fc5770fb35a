"""federation.key_matches_local: served keys against the keys we hold."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from synapse_fedhealth.checks.keys_local import (
    KEY_MATCHES_LOCAL,
    judge_key_matches_local,
)
from synapse_fedhealth.report import CheckResult, Status
from tests.unit.insider_helpers import (
    PROPERTY_SETTINGS,
    REQUEST,
    SERVER_NAME,
    json_values,
    key_response,
    make_key,
)

OURS = make_key("a_ours")
OTHER = make_key("a_other")
TARGET = "203.0.113.7:8448"
VALID = 1_900_000_000_000


def judge(served: object) -> CheckResult:
    return judge_key_matches_local(
        served,
        server_name=SERVER_NAME,
        signing_keys=(OURS,),
        request=REQUEST,
        target=TARGET,
    )


def test_our_key_is_ok() -> None:
    result = judge(key_response(SERVER_NAME, OURS, valid_until_ts=VALID))
    assert result.status is Status.OK
    assert result.id == KEY_MATCHES_LOCAL
    assert result.target == TARGET
    for field in ("url", "host_header", "sni"):
        assert result.details[field] == REQUEST[field]


def test_json_bytes_are_accepted() -> None:
    body = json.dumps(key_response(SERVER_NAME, OURS, valid_until_ts=VALID)).encode()
    assert judge(body).status is Status.OK


def test_padded_base64_is_the_same_key() -> None:
    served = key_response(SERVER_NAME, OURS, valid_until_ts=VALID)
    served["verify_keys"][OURS.key_id]["key"] += "="
    assert judge(served).status is Status.OK


def test_other_server_name_fails_naming_both() -> None:
    result = judge(key_response("old.example.net", OTHER, valid_until_ts=VALID))
    assert result.status is Status.FAIL
    assert "old.example.net" in result.summary and SERVER_NAME in result.summary
    assert OTHER.key_id in result.summary and OURS.key_id in result.summary
    assert result.fix
    assert result.details["reason"] == "other_server"


def test_other_key_fails_naming_both() -> None:
    result = judge(key_response(SERVER_NAME, OTHER, valid_until_ts=VALID))
    assert result.status is Status.FAIL
    assert OTHER.key_id in result.summary and OURS.key_id in result.summary
    assert result.details["reason"] == "other_key"


def test_same_id_other_key_fails() -> None:
    result = judge(key_response(SERVER_NAME, make_key("a_ours"), valid_until_ts=VALID))
    assert result.status is Status.FAIL
    assert "another public key" in result.summary


def test_our_key_only_as_old_key_fails() -> None:
    old = {OURS.key_id: {"key": OURS.verify_key_base64, "expired_ts": 1}}
    result = judge(key_response(SERVER_NAME, OTHER, valid_until_ts=VALID, old_keys=old))
    assert result.status is Status.FAIL
    assert "old" in result.summary


def test_extra_served_key_warns() -> None:
    served = key_response(SERVER_NAME, OURS, valid_until_ts=VALID)
    served["verify_keys"][OTHER.key_id] = {"key": OTHER.verify_key_base64}
    result = judge(served)
    assert result.status is Status.WARN
    assert OTHER.key_id in result.summary
    assert result.details["reason"] == "extra_key"


def test_missing_or_unusable_response_skips() -> None:
    assert judge(None).status is Status.SKIP
    assert judge(b"<html>").status is Status.SKIP
    assert judge([1, 2]).status is Status.SKIP


def test_no_local_key_skips() -> None:
    result = judge_key_matches_local(
        key_response(SERVER_NAME, OURS, valid_until_ts=VALID),
        server_name=SERVER_NAME,
        signing_keys=(),
        request=REQUEST,
    )
    assert result.status is Status.SKIP


def _assert_result(result: CheckResult) -> None:
    assert isinstance(result, CheckResult)
    assert result.status in (Status.OK, Status.SKIP) or result.fix


@PROPERTY_SETTINGS
@given(served=json_values)
def test_property_any_json(served: Any) -> None:
    _assert_result(judge(served))


@PROPERTY_SETTINGS
@given(
    server_name=st.just(SERVER_NAME) | json_values,
    verify_keys=json_values
    | st.dictionaries(
        st.text(max_size=12), st.fixed_dictionaries({"key": json_values}), max_size=3
    ),
    old=json_values,
)
def test_property_keyish_json(server_name: Any, verify_keys: Any, old: Any) -> None:
    served = {
        "server_name": server_name,
        "verify_keys": verify_keys,
        "old_verify_keys": old,
    }
    result = judge(served)
    _assert_result(result)
    assert result.status is not Status.OK


@PROPERTY_SETTINGS
@given(body=st.binary(max_size=300))
def test_property_any_bytes(body: bytes) -> None:
    _assert_result(judge(body))
