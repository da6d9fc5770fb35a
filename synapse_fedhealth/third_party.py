"""Third parties are not hammered (SPEC 2.2): a server that is not ours
(a notary, a server probed for outbound reach) is asked a given question at
most once per `min_interval_s`, however often runs come (`?refresh=true`).
A run inside that interval reuses the last answer, with its age.

One `ThirdPartyAnswers` lives as long as the process; runs share it. Our own
server is not a third party: it is probed afresh every run.

    answers = ThirdPartyAnswers(clock)
    answer = await answers.ask(("notary", name, question), lambda: fetch(...))
    answer.value, answer.age_ms, answer.reused
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, Protocol, TypeVar

import attr

T = TypeVar("T")

MIN_INTERVAL_S = 60.0
# Distinct questions remembered; the oldest answers are dropped beyond this,
# so a configuration with many notaries or peers cannot grow the cache.
MAX_REMEMBERED = 256


class Clock(Protocol):
    def seconds(self) -> float: ...


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ThirdPartyAnswer(Generic[T]):
    value: T
    asked_at: float  # clock seconds when the question was sent
    age_ms: int  # how old the answer is now (0 when just asked)
    reused: bool  # True: from an earlier run, the third party was not asked


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Remembered:
    value: object
    asked_at: float


class ThirdPartyAnswers:
    """The last answer to each question, per `key` (who is asked and what:
    build it from the third party's name and the question's content)."""

    def __init__(
        self,
        clock: Clock,
        *,
        min_interval_s: float = MIN_INTERVAL_S,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._max_remembered = max_remembered
        self._answers: dict[Hashable, _Remembered] = {}

    def last(self, key: Hashable) -> ThirdPartyAnswer[object] | None:
        """The answer to `key` asked within the interval, if any."""
        remembered = self._answers.get(key)
        if remembered is None:
            return None
        age_s = self._clock.seconds() - remembered.asked_at
        if not 0 <= age_s < self._min_interval_s:  # expired (or the clock went back)
            del self._answers[key]
            return None
        return ThirdPartyAnswer(
            value=remembered.value,
            asked_at=remembered.asked_at,
            age_ms=int(age_s * 1000),
            reused=True,
        )

    async def ask(
        self, key: Hashable, question: Callable[[], Awaitable[T]]
    ) -> ThirdPartyAnswer[T]:
        """The answer to `key` from within the interval, else `question()`'s
        (remembered; an exception is not remembered and propagates)."""
        last = self.last(key)
        if last is not None:
            return last  # type: ignore[return-value]  # the key fixes the type
        asked_at = self._clock.seconds()
        value = await question()
        self._remember(key, _Remembered(value, asked_at))
        return ThirdPartyAnswer(value=value, asked_at=asked_at, age_ms=0, reused=False)

    def _remember(self, key: Hashable, remembered: _Remembered) -> None:
        self._answers.pop(key, None)
        self._answers[key] = remembered
        while len(self._answers) > self._max_remembered:
            del self._answers[next(iter(self._answers))]
