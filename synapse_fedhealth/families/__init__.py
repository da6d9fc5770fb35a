"""The check families of a run, and the factory that picks them.

`DefaultFamilies` is what the module runs: first the network family and the
outside-view family, then, with the network findings, the checks of our own
targets and the notaries. The `check` command runs `OutsiderFamilies`.

The families' code (the engine, the judges, the network stack) is imported
when a run first asks for them, so loading the module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from synapse_fedhealth.check_ids import Family, ids_of

if TYPE_CHECKING:
    from synapse_fedhealth.engine.network_checker import NetworkFindings
    from synapse_fedhealth.engine.outbound import OutboundEnvironment
    from synapse_fedhealth.families.outside import EchoNonces
    from synapse_fedhealth.homeserver import HomeserverSnapshot
    from synapse_fedhealth.runner import CheckFamily
    from synapse_fedhealth.settings import RunSettings
    from synapse_fedhealth.third_party import ThirdPartyAnswers
    from synapse_fedhealth.wiring import RunIO


class FamilyFactory(Protocol):
    """Which families a run has; tests and the containment suite pass their
    own."""

    def first(self, io: RunIO, settings: RunSettings) -> Sequence[CheckFamily]: ...

    def follow_ups(
        self, io: RunIO, settings: RunSettings, network: NetworkFindings | None
    ) -> Sequence[CheckFamily]: ...


class DefaultFamilies:
    def __init__(
        self,
        snapshot: HomeserverSnapshot,
        *,
        echo: EchoNonces | None,
        third_parties: ThirdPartyAnswers | None = None,
        outbound: OutboundEnvironment | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._echo = echo
        self._third_parties = third_parties
        self._outbound = outbound

    def first(self, io: RunIO, settings: RunSettings) -> Sequence[CheckFamily]:
        from synapse_fedhealth.families.network import NetworkFamily
        from synapse_fedhealth.families.outbound import (
            OutboundFamily,
            SupportWellKnownFamily,
        )
        from synapse_fedhealth.families.outside import OutsideViewFamily

        return [
            NetworkFamily(io, settings),
            OutsideViewFamily(
                io,
                self._snapshot.server_name,
                public_baseurl=self._snapshot.public_baseurl,
            ),
            SupportWellKnownFamily(io, self._snapshot.server_name),
            OutboundFamily(self._outbound),
        ]

    def follow_ups(
        self, io: RunIO, settings: RunSettings, network: NetworkFindings | None
    ) -> Sequence[CheckFamily]:
        from synapse_fedhealth.families.notary import NotaryFamily
        from synapse_fedhealth.families.outbound import TrafficFamily
        from synapse_fedhealth.families.outside import ForwardedHeadersFamily
        from synapse_fedhealth.families.targets import TargetInsiderFamily
        from synapse_fedhealth.runner import SkippedFamily

        # Through the client path, and the federation path once it is known.
        forwarded = ForwardedHeadersFamily(
            io,
            public_baseurl=self._snapshot.public_baseurl,
            listeners=self._snapshot.listeners,
            echo=self._echo,
            network=network,
        )
        traffic = TrafficFamily(self._outbound, network)
        if network is None:
            return [
                forwarded,
                SkippedFamily(
                    Family.TARGETS.value,
                    ids_of(Family.TARGETS, Family.NOTARY),
                    "not run: the network checks did not finish (see their results)",
                ),
                traffic,
            ]
        return [
            forwarded,
            TargetInsiderFamily(io, self._snapshot, network),
            NotaryFamily(
                io,
                self._snapshot,
                network,
                notary_check=settings.notary_check,
                third_parties=self._third_parties,
            ),
            traffic,
        ]


class OutsiderFamilies:
    """What anyone can check of any server (the `check` command)."""

    def first(self, io: RunIO, settings: RunSettings) -> Sequence[CheckFamily]:
        from synapse_fedhealth.families.network import NetworkFamily
        from synapse_fedhealth.families.outbound import SupportWellKnownFamily
        from synapse_fedhealth.families.outside import OutsideViewFamily

        return [
            NetworkFamily(io, settings),
            OutsideViewFamily(
                io, settings.server_name, public_baseurl=None, knows_config=False
            ),
            SupportWellKnownFamily(io, settings.server_name),
        ]

    def follow_ups(
        self, io: RunIO, settings: RunSettings, network: NetworkFindings | None
    ) -> Sequence[CheckFamily]:
        return []
