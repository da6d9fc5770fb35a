"""The outbound direction's I/O seams (SPEC 4.6).

The module's Synapse adapter implements `OutboundClient` with Synapse's own
federation agent (`homeserver.SynapseOutbound`) and `DestinationsReader` with
Synapse's database (`homeserver.SynapseDestinations`); the traffic recorder feeds
`TrafficSource`. Tests pass fakes. Nothing here imports Synapse.

`OutboundEnvironment` is what the module builds at start-up from these; it
lives here, not with the families, so that building it imports none of the
families' code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Protocol

import attr
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from synapse_fedhealth.checks.outbound import (
        DestinationsRecord,
        OutboundProbe,
        PathAnswer,
    )
    from synapse_fedhealth.checks.traffic import TrafficRecord
    from synapse_fedhealth.third_party import ThirdPartyAnswers

# Causes kept from a failure's chain of wrapped exceptions.
MAX_ERROR_CHAIN = 6
# A probe ends this long before the run's deadline, so that its own cut
# (and the lookups that name a failure's cause) land inside the run, and the
# report has the probe's reason rather than the runner's placeholder.
OUTBOUND_PROBE_MARGIN_S = 0.3


class OutboundClient(Protocol):
    """Reaches a server as Synapse's own federation client does."""

    def probe(
        self, server_name: str, paths: Sequence[str], timeout_s: float
    ) -> Awaitable[OutboundProbe]:
        """Never raises: every failure is in the probe's answers."""


class DestinationsReader(Protocol):
    def read(self) -> Awaitable[DestinationsRecord]: ...


class TrafficSource(Protocol):
    def record(self) -> TrafficRecord: ...


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class OutboundEnvironment:
    """What the module hands the outbound families: Synapse's adapters (None
    where this Synapse lacks them) and the servers to probe."""

    client: OutboundClient | None
    destinations: DestinationsReader | None
    traffic: TrafficSource | None
    probe_servers: tuple[str, ...]
    # Where `probe_servers` came from, for the summary.
    source: str
    answers: ThirdPartyAnswers = attr.ib(eq=False)


def probe_servers_for(
    configured: tuple[str, ...] | None, trusted_key_servers: Sequence[str], own: str
) -> tuple[tuple[str, ...], str]:
    """SPEC 2.1: null means the trusted key servers' names; [] means none.
    Our own name is never an outbound target (the inbound checks cover it)."""
    if configured is None:
        names = tuple(n for n in trusted_key_servers if n != own)
        return names, "trusted_key_servers"
    return tuple(n for n in configured if n != own), "outbound_probe_servers"


def error_chain(error: BaseException | Failure) -> tuple[str, ...]:
    """ "TypeName: message" of an error and of what it wraps: Twisted's
    ResponseNeverReceived and friends hold a list of Failures in `reasons`,
    and the real cause (an SSL error, a refused connection) is inside."""
    out: list[str] = []
    pending: list[BaseException | Failure] = [error]
    while pending and len(out) < MAX_ERROR_CHAIN:
        item = pending.pop(0)
        value: BaseException | None = item.value if isinstance(item, Failure) else item
        if value is None:
            continue
        out.append(f"{type(value).__name__}: {value}"[:300])
        reasons = getattr(value, "reasons", None)
        if isinstance(reasons, list):
            pending.extend(
                r for r in reasons if isinstance(r, (Failure, BaseException))
            )
        inner = getattr(value, "subFailure", None) or value.__cause__
        if isinstance(inner, (Failure, BaseException)):
            pending.append(inner)
    return tuple(out)


def answer_from_error(path: str, error: BaseException | Failure) -> PathAnswer:
    from synapse_fedhealth.checks.outbound import PathAnswer

    chain = error_chain(error)
    timed_out = any(
        c.startswith(("TimeoutError", "CancelledError", "TCPTimedOutError"))
        for c in chain
    )
    return PathAnswer(path=path, error_chain=chain, timed_out=timed_out)
