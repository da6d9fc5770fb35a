"""Runs are named Synapse background processes: no module log line of a run
comes from the sentinel logcontext, and a waiter gets its own context back."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest
from synapse.logging.context import (
    LoggingContextFilter,
    current_context,
    make_deferred_yieldable,
    run_in_background,
)
from twisted.internet import defer, task

from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.spawn import spawn
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


def _burn_cpu(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class _FanningOutFamily:
    """Fans out as the engine does (`engine.spawn` under gatherResults): a
    child and a grandchild that the reactor resumes, and that then work."""

    name = "network"
    check_ids: Sequence[str] = ("connection.reachable",)
    BURN_S = 0.05

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.contexts: list[Any] = []

    async def _grandchild(self) -> None:
        await task.deferLater(self._reactor, 1, lambda: None)
        self.contexts.append(current_context())
        logger.warning("grandchild resumed")
        _burn_cpu(self.BURN_S)

    async def _child(self) -> None:
        await task.deferLater(self._reactor, 1, lambda: None)
        self.contexts.append(current_context())
        logger.warning("child resumed")
        _burn_cpu(self.BURN_S)
        await spawn(self._grandchild())

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        await defer.gatherResults([spawn(self._child())], consumeErrors=True)
        # Back in the family after its child's end woke it.
        self.contexts.append(current_context())
        return FamilyOutcome(
            checks=(fail("connection.reachable", "refused", fix="Open the port."),)
        )


class _CurrentContextRecorder(logging.Handler):
    """The logcontext current when a line is logged (not its label)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.contexts: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.contexts.append((str(current_context()), record.getMessage()))


def test_spawned_coroutines_step_in_the_run_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, _api, reactor = _module(monkeypatch)
    family = _FanningOutFamily(reactor)
    module.service._families = OneFamily(family)
    recorder = _CurrentContextRecorder()
    package_logger = logging.getLogger("synapse_fedhealth")
    package_logger.addHandler(recorder)
    try:
        with request_logcontext("GET-1", "example.com"):
            run_in_background(module.get_report, True)
        for _ in range(4):
            reactor.advance(1)
            # The reactor is left in the sentinel context between steps.
            assert str(current_context()) == "sentinel"
    finally:
        package_logger.removeHandler(recorder)

    assert len(family.contexts) == 3, family.contexts
    run_context = family.contexts[0]
    assert str(run_context).startswith("fedhealth_run"), family.contexts
    assert all(c is run_context for c in family.contexts), family.contexts
    lines = dict((m, ctx) for ctx, m in recorder.contexts)
    assert lines["child resumed"] == str(run_context)
    assert lines["grandchild resumed"] == str(run_context)
    # The CPU the child and the grandchild burnt after the reactor resumed
    # them is the run's.
    usage = run_context.get_resource_usage()
    assert usage.ru_utime + usage.ru_stime >= 2 * family.BURN_S * 0.9


def test_without_a_stepper_spawn_is_ensure_deferred() -> None:
    """The `check` command runs the engine without Synapse."""

    async def answer() -> int:
        return 42

    d = spawn(answer())
    assert isinstance(d, defer.Deferred)
    assert d.result == 42
