"""Runs are named Synapse background processes: no module log line of a run
comes from the sentinel logcontext, and a waiter gets its own context back."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from synapse.logging.context import (
    LoggingContextFilter,
    current_context,
    make_deferred_yieldable,
    run_in_background,
)
from twisted.internet import task

from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.report import Report, fail
from synapse_fedhealth.runner import FamilyOutcome

from .synapse_releases import request_logcontext
from .test_module import OneFamily, _module

logger = logging.getLogger("synapse_fedhealth")  # as the module logs


class _ContextRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.contexts: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        # What Synapse's handlers write: LoggingContextFilter keeps a
        # `request` already set on a line logged from the sentinel context.
        LoggingContextFilter().filter(record)
        self.contexts.append((str(getattr(record, "request", "")), record.getMessage()))


class _LoggingFamily:
    """Logs before and after waiting on the reactor, as real probes do."""

    name = "network"
    check_ids: Sequence[str] = ("connection.reachable",)

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        logger.warning("probing")
        # The engine awaits plain Deferreds, which resume it from the reactor.
        await task.deferLater(self._reactor, 1, lambda: None)
        logger.warning("probed")
        await make_deferred_yieldable(task.deferLater(self._reactor, 1, lambda: None))
        logger.warning("probed again")
        return FamilyOutcome(
            checks=(fail("connection.reachable", "refused", fix="Open the port."),)
        )


def test_a_run_logs_from_its_own_background_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, _api, reactor = _module(monkeypatch)
    module.service._families = OneFamily(_LoggingFamily(reactor))
    recorder = _ContextRecorder()
    package_logger = logging.getLogger("synapse_fedhealth")
    package_logger.addHandler(recorder)
    seen: list[tuple[Report, str]] = []

    async def waiter() -> None:
        report = await make_deferred_yieldable(module.get_report(True))
        seen.append((report, str(current_context())))

    try:
        with request_logcontext("GET-1", "example.com"):
            run_in_background(waiter)
        assert str(current_context()) == "sentinel"
        reactor.advance(1)
        reactor.advance(1)
    finally:
        package_logger.removeHandler(recorder)

    assert seen and seen[0][1] == "GET-1", "the waiter got its logcontext back"
    assert str(current_context()) == "sentinel"
    messages = [m for _, m in recorder.contexts]
    assert {"probing", "probed", "probed again"} <= set(messages)
    from_sentinel = [m for ctx, m in recorder.contexts if ctx == "sentinel"]
    assert not from_sentinel, f"logged from the sentinel context: {from_sentinel}"
    assert all(ctx.startswith("fedhealth_run") for ctx, _ in recorder.contexts)
