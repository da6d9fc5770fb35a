"""Small hardening: a cancelled connection attempt is a timeout, the notary
entries judged per answer are capped, and a well-known `m.server` too long
for a server name fails the grammar as Synapse's parser would."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.task import Clock

from synapse_fedhealth.checks import notary as notary_checks
from synapse_fedhealth.engine.deadline import BoundFailure, Deadline


def test_a_connection_attempt_cancelled_by_the_deadline_is_a_timeout() -> None:
    clock = Clock()

    def cancelled(d: defer.Deferred[Any]) -> None:
        d.errback(error.ConnectingCancelledError(("203.0.113.1", 443)))

    async def connect() -> Any:
        return await defer.Deferred(cancelled)

    out: list[Any] = []
    bounded = Deadline.after(clock, 1).bound(connect, lambda failure: failure)
    defer.ensureDeferred(bounded).addBoth(out.append)
    clock.advance(2)
    assert isinstance(out[0], BoundFailure) and out[0].kind == "timeout"


def test_notary_entries_judged_per_answer_are_capped() -> None:
    ours = {"server_name": "example.com"}
    answer = {"server_keys": [ours] * (notary_checks.MAX_NOTARY_ENTRIES * 100)}
    entries = notary_checks._entries_for(answer, "example.com")
    assert len(entries) == notary_checks.MAX_NOTARY_ENTRIES


def test_a_well_known_m_server_too_long_for_a_server_name_is_invalid() -> None:
    import json

    from synapse_fedhealth.matrix_names import (
        MAX_HOSTNAME_LENGTH,
        ServerNameError,
        parse_and_validate_server_name,
    )
    from synapse_fedhealth.net.results import HttpResult
    from synapse_fedhealth.server_discovery import WellKnownKind, interpret_well_known

    longest = ".".join(["a" * 63] * 4)[:MAX_HOSTNAME_LENGTH]
    assert parse_and_validate_server_name(longest + ":8448")[0] == longest
    too_long = longest + "a"
    try:
        parse_and_validate_server_name(too_long)
    except ServerNameError as e:
        assert "longer than 255" in str(e)
    else:
        raise AssertionError("a 256-character host passed")
    body = json.dumps({"m.server": too_long + ":8448"}).encode()
    http = HttpResult(
        url="https://example.com/.well-known/matrix/server",
        host_header="example.com",
        sni="example.com",
        status=200,
        headers={"content-type": ("application/json",)},
        body=body,
    )
    outcome = interpret_well_known(http, now=0.0)
    assert outcome.kind is WellKnownKind.INVALID
    assert "not a valid server name" in outcome.problem
