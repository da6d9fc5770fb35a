"""`spawn`: how the engine starts the coroutines a run fans out to.

The engine is plain Twisted (the `check` command runs it without Synapse), so
a spawned coroutine is resumed by the reactor in whatever logcontext is
current there: in Synapse, the sentinel. Inside Synapse the run installs a
stepper (`use_stepper`, a contextvar, so it follows the run into every
coroutine it spawns, and theirs): each spawned coroutine is then awaited
through it, which makes the run's logcontext current during each of its
steps, so their log lines and CPU are the run's. Without a stepper, `spawn`
is `defer.ensureDeferred`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from twisted.internet import defer

T = TypeVar("T")

Stepper = Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]]

_STEPPER: contextvars.ContextVar[Stepper | None] = contextvars.ContextVar(
    "fedhealth_run_stepper", default=None
)


def use_stepper(stepper: Stepper) -> None:
    """Every coroutine spawned from here on (in this context and the ones it
    spawns) is awaited through `stepper`."""
    _STEPPER.set(stepper)


def spawn(coroutine: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
    stepper = _STEPPER.get()
    if stepper is None:
        return defer.ensureDeferred(coroutine)
    return defer.ensureDeferred(_through(stepper, coroutine))


async def _through(stepper: Stepper, coroutine: Coroutine[Any, Any, T]) -> T:
    return cast(T, await stepper(coroutine))
