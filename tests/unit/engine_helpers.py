"""Build the network engine from fakes, on a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.network_checker import NetworkChecker, NetworkFindings
from synapse_fedhealth.engine.probes import TargetConnections
from synapse_fedhealth.net.tls import TrustStore
from synapse_fedhealth.settings import RunSettings
from synapse_fedhealth.wiring import RunIO

WALL_CLOCK_START = 1.7e9  # unix seconds at reactor time 0


def fake_io(
    reactor: Any,
    *,
    resolver: Any,
    http: Any,
    tls: Any,
    trust: TrustStore | None = None,
    trust_error: str = "",
    targets: TargetConnections | None = None,
) -> RunIO:
    return RunIO(
        resolver=resolver,
        http=http,
        tls=tls,
        trust=trust or TrustStore(),
        trust_error=trust_error,
        wall_clock=lambda: WALL_CLOCK_START + reactor.seconds(),
        targets=targets,
    )


def check_network(
    reactor: Any, settings: RunSettings, io: RunIO
) -> defer.Deferred[NetworkFindings]:
    """One network check of `settings.server_name` within `settings.timeout_s`."""
    deadline = Deadline.after(reactor, settings.timeout_s)
    return defer.ensureDeferred(NetworkChecker(io, settings).check(deadline))
