"""federation.notary on notary answers built with real signedjson keys."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from signedjson.key import decode_verify_key_base64
from synapse.config.key import TrustedKeyServer
from synapse.crypto.keyring import PerspectivesKeyFetcher

from synapse_fedhealth.checks.notary import (
    NOTARY,
    build_notary_query,
    judge_notary_answer,
    judge_notary_error,
    notary_minimum_valid_until_ts,
    notary_signature_problem,
    plan_notary_checks,
)
from synapse_fedhealth.homeserver import HomeserverSnapshot, TrustedKeyServerInfo
from synapse_fedhealth.report import CheckResult, Status
from tests.unit.insider_helpers import (
    NOTARY_NAME,
    PROPERTY_SETTINGS,
    REQUEST,
    SERVER_NAME,
    json_values,
    key_response,
    make_key,
    notarised,
    notary_info,
)

OUR_KEY = make_key("a_ours")
NOTARY_KEY = make_key("n_1")
OTHER_KEY = make_key("a_other")
NOW = 1_700_000_000_000
MINIMUM = NOW + 3_600_000
FRESH = NOW + 86_400_000


def answer(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"server_keys": list(entries)}).encode()


def judge(
    body: bytes, *, status: int = 200, notary: TrustedKeyServerInfo | None = None
) -> CheckResult:
    return judge_notary_answer(
        status,
        {"content-type": ["application/json"]},
        body,
        notary=notary or notary_info(NOTARY_KEY),
        server_name=SERVER_NAME,
        signing_key=OUR_KEY,
        minimum_valid_until_ts=MINIMUM,
        request=REQUEST,
    )


def fresh_entry(**kw: Any) -> dict[str, Any]:
    return notarised(
        key_response(SERVER_NAME, OUR_KEY, valid_until_ts=FRESH, **kw), NOTARY_KEY
    )


def test_fresh_key_is_ok() -> None:
    result = judge(answer(fresh_entry()))
    assert result.status is Status.OK, result.summary
    assert result.id == NOTARY
    assert result.target == NOTARY_NAME
    assert result.details["notary_signature"] == "valid"
    assert result.details["valid_until_ts"] == FRESH
    for field in ("url", "host_header", "sni"):
        assert result.details[field] == REQUEST[field]


def test_stale_key_fails() -> None:
    entry = notarised(
        key_response(SERVER_NAME, OUR_KEY, valid_until_ts=MINIMUM - 1), NOTARY_KEY
    )
    result = judge(answer(entry))
    assert result.status is Status.FAIL
    assert result.details["reason"] == "stale"
    assert result.fix


def test_freshest_of_several_entries_is_judged() -> None:
    stale = notarised(
        key_response(SERVER_NAME, OUR_KEY, valid_until_ts=NOW), NOTARY_KEY
    )
    result = judge(answer(stale, fresh_entry()))
    assert result.status is Status.OK


def test_no_keys_fails() -> None:
    result = judge(answer())
    assert result.status is Status.FAIL
    assert result.details["reason"] == "no_keys"


def test_keys_of_other_servers_only_fail() -> None:
    entry = notarised(
        key_response("other.org", OTHER_KEY, valid_until_ts=FRESH), NOTARY_KEY
    )
    assert judge(answer(entry)).details["reason"] == "no_keys"


def test_other_key_id_fails_naming_both() -> None:
    entry = notarised(
        key_response(SERVER_NAME, OTHER_KEY, valid_until_ts=FRESH), NOTARY_KEY
    )
    result = judge(answer(entry))
    assert result.status is Status.FAIL
    assert result.details["reason"] == "other_key"
    assert OTHER_KEY.key_id in result.summary and OUR_KEY.key_id in result.summary


def test_our_key_only_as_old_key_fails() -> None:
    old = {OUR_KEY.key_id: {"key": OUR_KEY.verify_key_base64, "expired_ts": NOW}}
    entry = notarised(
        key_response(SERVER_NAME, OTHER_KEY, valid_until_ts=FRESH, old_keys=old),
        NOTARY_KEY,
    )
    result = judge(answer(entry))
    assert result.status is Status.FAIL
    assert result.details["reason"] == "old_key"


def test_same_key_id_other_key_bytes_fails() -> None:
    impostor = make_key("a_ours")  # same id, another key pair
    entry = notarised(
        key_response(SERVER_NAME, impostor, valid_until_ts=FRESH), NOTARY_KEY
    )
    result = judge(answer(entry))
    assert result.status is Status.FAIL
    assert result.details["reason"] == "key_mismatch"


def test_broken_self_signature_fails() -> None:
    entry = key_response(SERVER_NAME, OUR_KEY, valid_until_ts=FRESH)
    entry["valid_until_ts"] = FRESH + 1  # changed after our server signed it
    result = judge(answer(notarised(entry, NOTARY_KEY)))
    assert result.status is Status.FAIL
    assert result.details["reason"] == "self_signature"


def test_bad_notary_signature_warns() -> None:
    forged = notarised(
        key_response(SERVER_NAME, OUR_KEY, valid_until_ts=FRESH), make_key("n_1")
    )
    result = judge(answer(forged))
    assert result.status is Status.WARN
    assert result.details["reason"] == "notary_signature"


def test_wrong_notary_key_id_warns() -> None:
    entry = notarised(
        key_response(SERVER_NAME, OUR_KEY, valid_until_ts=FRESH), make_key("n_2")
    )
    result = judge(answer(entry))
    assert result.status is Status.WARN
    assert "n_2" in result.summary


def test_unsigned_by_notary_warns() -> None:
    entry = key_response(SERVER_NAME, OUR_KEY, valid_until_ts=FRESH)
    assert judge(answer(entry)).status is Status.WARN


def test_signature_not_checked_without_verify_keys() -> None:
    entry = key_response(SERVER_NAME, OUR_KEY, valid_until_ts=FRESH)
    result = judge(answer(entry), notary=notary_info(None))
    assert result.status is Status.OK
    assert "not checked" in result.details["notary_signature"]


def test_content_problem_wins_over_notary_signature_problem() -> None:
    stale = notarised(
        key_response(SERVER_NAME, OUR_KEY, valid_until_ts=NOW), make_key("n_1")
    )
    assert judge(answer(stale)).status is Status.FAIL


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b"oops"),
        (404, b'{"errcode": "M_UNRECOGNIZED"}'),
        (200, b"<html>"),
        (200, b"[]"),
        (200, b'{"server_keys": {}}'),
    ],
)
def test_unusable_notary_answers_warn(status: int, body: bytes) -> None:
    result = judge(body, status=status)
    assert result.status is Status.WARN
    assert result.fix


def test_timeout_fails_and_unreachable_warns() -> None:
    notary = notary_info(NOTARY_KEY)
    timeout = judge_notary_error("timeout", "", notary=notary, request=REQUEST)
    assert timeout.status is Status.FAIL and timeout.details["reason"] == "timeout"
    assert "timed out" in timeout.summary
    refused = judge_notary_error(
        "refused", "Connection refused", notary=notary, request=REQUEST
    )
    assert refused.status is Status.WARN and refused.fix


def _synapse_trusted(notary: TrustedKeyServerInfo) -> TrustedKeyServer:
    assert notary.verify_keys is not None
    return TrustedKeyServer(
        server_name=notary.server_name,
        verify_keys={
            key_id: decode_verify_key_base64("ed25519", key_id.split(":")[1], b64)
            for key_id, b64 in notary.verify_keys.items()
        },
    )


@pytest.mark.parametrize("good", [True, False])
def test_notary_signature_agrees_with_synapse(good: bool) -> None:
    """Our verdict on the notary's signature is Synapse's
    (`PerspectivesKeyFetcher._validate_perspectives_response`)."""
    signer = NOTARY_KEY if good else make_key("n_1")
    entry = notarised(key_response(SERVER_NAME, OUR_KEY, valid_until_ts=FRESH), signer)
    notary = notary_info(NOTARY_KEY)
    synapse_ok = True
    try:
        PerspectivesKeyFetcher._validate_perspectives_response(
            None,  # type: ignore[arg-type]
            _synapse_trusted(notary),
            copy.deepcopy(entry),
        )
    except Exception:
        synapse_ok = False
    assert synapse_ok is good
    assert (notary_signature_problem(entry, notary) is None) is good


def _snapshot(**kw: Any) -> HomeserverSnapshot:
    return HomeserverSnapshot(
        server_name=SERVER_NAME, public_baseurl=None, listeners=(), **kw
    )


def test_plan() -> None:
    notaries = (notary_info(NOTARY_KEY), TrustedKeyServerInfo(server_name=SERVER_NAME))
    snap = _snapshot(signing_keys=(OUR_KEY,), trusted_key_servers=notaries)
    plan = plan_notary_checks(snap, notary_check=True)
    assert [n.server_name for n in plan.notaries] == [NOTARY_NAME]
    assert [r.status for r in plan.skipped] == [Status.SKIP]
    assert "itself" in plan.skipped[0].summary

    off = plan_notary_checks(snap, notary_check=False)
    assert not off.notaries and "notary_check" in off.skipped[0].summary
    none = plan_notary_checks(_snapshot(signing_keys=(OUR_KEY,)), notary_check=True)
    assert not none.notaries and "trusted_key_servers" in none.skipped[0].summary


def test_query_and_minimum() -> None:
    assert build_notary_query(SERVER_NAME, [OUR_KEY.key_id], 5) == {
        "server_keys": {SERVER_NAME: {OUR_KEY.key_id: {"minimum_valid_until_ts": 5}}}
    }
    day = 86_400_000
    minimum = notary_minimum_valid_until_ts(NOW, day)
    # What our own server serves right after a fetch always passes ...
    assert minimum <= NOW + day // 2
    # ... and a copy fetched more than half an interval ago does not.
    assert minimum > NOW + day // 2 - 10 * 60_000
    assert notary_minimum_valid_until_ts(NOW, 0) > NOW


# --- properties ---------------------------------------------------------------


def _judge_any(status: int, body: bytes) -> CheckResult:
    return judge(body, status=status)


@PROPERTY_SETTINGS
@given(body=json_values)
def test_property_any_json_answer_is_a_result(body: Any) -> None:
    result = _judge_any(200, json.dumps(body).encode())
    assert isinstance(result, CheckResult)
    assert result.status is Status.OK or result.fix


_entryish = st.fixed_dictionaries(
    {
        "server_name": st.just(SERVER_NAME) | st.text(max_size=5),
        "valid_until_ts": json_values,
        "verify_keys": st.just({OUR_KEY.key_id: {"key": OUR_KEY.verify_key_base64}})
        | json_values,
        "old_verify_keys": json_values,
        "signatures": json_values
        | st.just(
            {SERVER_NAME: {OUR_KEY.key_id: "AAAA"}, NOTARY_NAME: {NOTARY_KEY.key_id: 1}}
        ),
    }
)


@PROPERTY_SETTINGS
@given(entries=st.lists(_entryish | json_values, max_size=3))
def test_property_malformed_entries_are_a_result(entries: list[Any]) -> None:
    result = _judge_any(200, json.dumps({"server_keys": entries}).encode())
    assert isinstance(result, CheckResult)
    # None of these carry a valid signature of ours: never ok.
    assert result.status is not Status.OK


@PROPERTY_SETTINGS
@given(status=st.integers(0, 999), body=st.binary(max_size=200))
def test_property_any_bytes_are_a_result(status: int, body: bytes) -> None:
    assert isinstance(_judge_any(status, body), CheckResult)
