"""`Deadline.bound` turns its own deadline into a `timeout`, also when what
it bounds is a gather of coroutines that the deadline cancels."""

from __future__ import annotations

import logging

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from synapse_fedhealth.engine.deadline import BoundFailure, Deadline
from synapse_fedhealth.engine.spawn import spawn


async def _never(clock: Clock) -> None:
    await defer.Deferred()


async def _nested_gathers(clock: Clock) -> None:
    # What the target probes are: a gather of coroutines, each awaiting a
    # gather of its own steps.
    async def one_target() -> None:
        await defer.gatherResults(
            [spawn(_never(clock)), spawn(_never(clock))], consumeErrors=True
        )

    await defer.gatherResults(
        [spawn(one_target()) for _ in range(3)], consumeErrors=True
    )


@pytest.mark.parametrize("bounded", [_never, _nested_gathers])
def test_a_cancelled_gather_is_a_timeout_not_an_error(
    bounded: object, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    deadline = Deadline.after(clock, 2.0)
    seen: list[BoundFailure] = []

    def failed(failure: BoundFailure) -> str:
        seen.append(failure)
        return "cut"

    async def run() -> str:
        return await deadline.bound(
            lambda: bounded(clock),  # type: ignore[operator]
            failed,
            what="the target probes",
        )

    with caplog.at_level(logging.WARNING, logger="synapse_fedhealth"):
        result = defer.ensureDeferred(run())
        clock.advance(1.9)
        assert not result.called
        clock.advance(0.2)
    assert result.result == "cut"
    assert [f.kind for f in seen] == ["timeout"]
    assert [r.getMessage() for r in caplog.records] == []


def test_a_real_error_in_a_gather_is_still_unexpected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    deadline = Deadline.after(clock, 2.0)

    async def broken() -> None:
        raise ValueError("a bug")

    async def gathered() -> None:
        await defer.gatherResults([spawn(broken())], consumeErrors=True)

    seen: list[BoundFailure] = []

    async def run() -> None:
        await deadline.bound(gathered, lambda f: seen.append(f), what="the probes")

    with caplog.at_level(logging.WARNING, logger="synapse_fedhealth"):
        defer.ensureDeferred(run())
    assert [f.kind for f in seen] == ["error"]
    assert any(
        "unexpected error in the probes" in r.getMessage() for r in caplog.records
    )
