"""One value carries a run's time budget: `Deadline`.

The module's `timeout` is the wall-clock budget of a whole run: the report is
built by then, whatever hangs. The runner makes one `Deadline` per run and
hands the same object to every family; a family that needs a stage to stop
earlier takes a `share` of what is left, and each awaited operation is cut at
its deadline with `bound`. Every share and margin of the engine is named here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import attr
from twisted.internet import defer, error

from synapse_fedhealth.engine.spawn import spawn

logger = logging.getLogger("synapse_fedhealth")

T = TypeVar("T")

# Discovery may use this share of the budget, so that the probes of the
# targets it finds always get time of their own; the well-known and the
# server name's SRV lookups may use this share of discovery's time, and
# resolving what they point at gets the rest.
DISCOVERY_SHARE = 0.65
WELL_KNOWN_SHARE = 0.7
# Finding a notary (its own discovery) may use this share of what is left; the
# POST to it gets the rest.
NOTARY_DISCOVERY_SHARE = 0.6
# A target's keys request waits for its version request to free their
# shared connection for at most this share of what is left; then it takes a
# connection of its own.
KEYS_WAIT_SHARE = 0.25
# A later check's request to a target waits for the run's connection to it,
# while another request rides it, for at most this share of what is left;
# then it takes a connection of its own.
CONNECTION_WAIT_SHARE = 0.25
# Kept back at the end of the budget to judge the observations and build the
# report, so the report is ready by the deadline itself.
REPORT_MARGIN_S = 0.05


class Clock(Protocol):
    """The part of the reactor a deadline uses (IReactorTime)."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> Any: ...


class BoundFailure(Exception):
    """Why `bound` gave up: `kind` is "timeout" or "error"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Deadline:
    """An absolute point on `clock` (reactor seconds)."""

    clock: Clock = attr.ib(eq=False, repr=False)
    at: float

    @classmethod
    def after(cls, clock: Clock, seconds: float) -> Deadline:
        return cls(clock, clock.seconds() + max(0.0, seconds))

    def remaining_s(self) -> float:
        return max(0.0, self.at - self.clock.seconds())

    @property
    def expired(self) -> bool:
        return self.remaining_s() <= 0.0

    def share(self, fraction: float) -> Deadline:
        """A deadline `fraction` of the way from now to this one."""
        now = self.clock.seconds()
        return Deadline(self.clock, now + max(0.0, self.at - now) * fraction)

    def earlier(self, margin_s: float) -> Deadline:
        """This deadline moved `margin_s` earlier (never before now)."""
        return Deadline(self.clock, max(self.clock.seconds(), self.at - margin_s))

    async def bound(
        self,
        make: Callable[[], Awaitable[T]],
        on_failure: Callable[[BoundFailure], T],
        *,
        what: str = "probe",
    ) -> T:
        """Await `make()` until this deadline.

        A timeout or an exception (a bug: probes never raise by contract) comes
        back as `on_failure(...)`, never as an exception: one hanging or broken
        probe must not take the run down with it."""
        try:
            d: defer.Deferred[T] = spawn(_awaited(make))
        except Exception as e:  # make() itself raised before awaiting
            return on_failure(_unexpected(what, e))
        d.addTimeout(self.remaining_s(), self.clock)  # type: ignore[arg-type]
        try:
            return await d
        except defer.TimeoutError:
            return on_failure(BoundFailure("timeout", "timed out"))
        except (defer.CancelledError, error.ConnectingCancelledError):
            # Cancelled by this deadline: a connection attempt that was
            # cancelled says ConnectingCancelledError, which addTimeout does
            # not turn into a TimeoutError.
            return on_failure(BoundFailure("timeout", "timed out"))
        except Exception as e:
            if _cancelled_gather(e):
                return on_failure(BoundFailure("timeout", "timed out"))
            return on_failure(_unexpected(what, e))


def _cancelled_gather(e: BaseException | None) -> bool:
    """A `gatherResults` this deadline cancelled: it fails with its first
    child's CancelledError wrapped in a FirstError (wrapped again for each
    gather in between), which addTimeout does not recognise as its own."""
    while isinstance(e, defer.FirstError):
        e = e.subFailure.value
    return isinstance(
        e, (defer.CancelledError, error.ConnectingCancelledError, defer.TimeoutError)
    )


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


def _unexpected(what: str, e: Exception) -> BoundFailure:
    # One line, no traceback: Synapse's log is the admin's, not ours.
    logger.warning(
        "synapse_fedhealth: unexpected error in %s: %s: %s", what, type(e).__name__, e
    )
    return BoundFailure("error", f"{type(e).__name__}: {e}")
