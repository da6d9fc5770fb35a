"""Remote strings are escaped where they enter and, as a last resort, by
every output: JSON, the text page, log lines and the CLI survive control
characters, ANSI escapes, bidi overrides and lone surrogates."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_fedhealth.checks.discovery import Target
from synapse_fedhealth.checks.federation import check_version
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.remote_text import (
    clean_json,
    clean_line,
    clean_text,
    encode_clean_json,
)
from synapse_fedhealth.render.text import problem_line, render_text
from synapse_fedhealth.report import CheckResult, Report, Status, fail

from .synapse_releases import json_encoder

HOSTILE = (
    "Syn\ud800apse\x1b[2J\x1b]0;pwned\x07\r\nfedhealth WARNING forged\u202e\x9b31m\x7f"
)


def _unsafe(text: str) -> list[str]:
    return [
        c
        for c in text
        if ord(c) < 0x20
        and c != "\n"
        or 0x7F <= ord(c) <= 0x9F
        or 0xD800 <= ord(c) <= 0xDFFF
        or c in "\u202e\u2028\u2029"
    ]


def test_clean_line_escapes_visibly() -> None:
    assert clean_line("plain ünïcode ✓") == "plain ünïcode ✓"
    cleaned = clean_line(HOSTILE)
    assert _unsafe(cleaned) == [] and "\n" not in cleaned
    assert "\\ud800" in cleaned and "\\x1b[2J" in cleaned and "\\r\\n" in cleaned
    assert "\\u202e" in cleaned and "\\x9b" in cleaned and "\\x7f" in cleaned


def test_clean_text_keeps_lines() -> None:
    assert clean_text("a\nb\x1b[0m\n") == "a\nb\\x1b[0m\n"


@given(st.text())
def test_any_string_cleans_to_encodable_single_line(text: str) -> None:
    cleaned = clean_line(text)
    cleaned.encode("utf-8")
    assert "\n" not in cleaned and _unsafe(cleaned) == []


# JSON-shaped values whose strings (keys too) hold any character, the unsafe
# ones more often than chance would pick them.
_ANY_TEXT = st.text(
    st.one_of(st.characters(), st.sampled_from(HOSTILE + "\\\t\u2066\udfff\U0001f600"))
)
_JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _ANY_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_JSON_VALUES)
def test_encoding_without_the_copy_is_encoding_the_cleaned_copy(value: object) -> None:
    encoder = json_encoder()
    assert encode_clean_json(encoder, value) == encoder.encode(clean_json(value))


def test_a_clean_report_is_encoded_once() -> None:
    class Counting(json.JSONEncoder):
        calls = 0

        def encode(self, o: object) -> str:
            Counting.calls += 1
            return super().encode(o)

    encoder = Counting(separators=(",", ":"))
    assert encode_clean_json(encoder, {"summary": "valid, 90 days left"}) == (
        '{"summary":"valid, 90 days left"}'
    )
    assert Counting.calls == 1
    assert encode_clean_json(encoder, {"summary": HOSTILE}) == encoder.encode(
        clean_json({"summary": HOSTILE})
    )
    assert Counting.calls == 4


def _version_check() -> CheckResult:
    body = json.dumps({"server": {"name": HOSTILE, "version": "1.0\x1b[31m"}})
    http = HttpResult(
        url="https://peer.test/_matrix/federation/v1/version",
        host_header="peer.test",
        sni="peer.test",
        status=200,
        headers={"content-type": ("application/json",)},
        body=body.encode("utf-8"),
    )
    target = Target(
        ip="203.0.113.1",
        port=8448,
        host_header="peer.test",
        sni="peer.test",
        hostname="peer.test",
        source="test",
    )
    check, _ = check_version(target, http)
    return check


def _report(check: CheckResult) -> Report:
    return Report.build(
        server_name="example.com",
        checks=[check],
        federation_disabled=False,
        generated_at=0,
        duration_ms=1,
    )


def _assert_outputs_survive(check: CheckResult) -> None:
    report = _report(check)
    # JSON, as the endpoint encodes it (Synapse's encoder, then UTF-8).
    encoded = json_encoder().encode(clean_json(report.to_json())).encode("utf-8")
    assert "\x1b" not in encoded.decode("utf-8")
    # The text page and the CLI.
    text = render_text(report, width=100)
    text.encode("utf-8")
    assert _unsafe(text) == []
    # A log line: one line, which a handler writes.
    line = problem_line(check)
    assert "\n" not in line and _unsafe(line) == []
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.emit(logging.makeLogRecord({"msg": "%s", "args": (line,)}))
    handler.flush()


def test_a_hostile_version_name_is_cleaned_where_it_enters() -> None:
    check = _version_check()
    assert check.status is Status.OK
    assert (
        _unsafe(check.summary) == []
        and _unsafe(json.dumps(check.details, ensure_ascii=False)) == []
    )
    _assert_outputs_survive(check)


@pytest.mark.parametrize("where", ["summary", "details", "target"])
def test_a_value_missed_at_entry_still_cannot_break_an_output(where: str) -> None:
    check = fail(
        "federation.version",
        HOSTILE if where == "summary" else "refused",
        fix="Fix it.",
        details={"server": {"name": HOSTILE, HOSTILE: [HOSTILE]}}
        if where == "details"
        else {},
    )
    if where == "target":
        check = CheckResult(
            id=check.id, status=check.status, summary="x", target=HOSTILE, fix="f"
        )
    _assert_outputs_survive(check)
