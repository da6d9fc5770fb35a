"""One server name, end to end: resolve -> probe -> judge -> render.

`NetworkChecker.check(deadline)` gives `NetworkFindings`: the check results of
SPEC 4.2-4.4, the federation-tester view, and the typed facts later checks
build on (the resolution and its targets, the keys served there, certificate
expiry). It never raises and ends by its deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attr

from synapse_fedhealth.checks.federation import ServedKeys
from synapse_fedhealth.checks.network_judge import (
    JudgeSettings,
    engine_error,
    judge_network,
)
from synapse_fedhealth.engine.deadline import DISCOVERY_SHARE, Deadline
from synapse_fedhealth.engine.probes import TargetProber
from synapse_fedhealth.engine.resolution import ServerNameResolver
from synapse_fedhealth.render.federation_tester import render_federation_tester
from synapse_fedhealth.report import CheckResult
from synapse_fedhealth.server_discovery import Resolution, Target
from synapse_fedhealth.settings import RunSettings
from synapse_fedhealth.wiring import RunIO

logger = logging.getLogger("synapse_fedhealth")


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class NetworkFindings:
    resolution: Resolution
    checks: tuple[CheckResult, ...]
    # matrix-federation-tester /api/report field names.
    federation_tester: Mapping[str, Any]
    # address ("ip:port") -> the parsed /_matrix/key/v2/server answer there.
    served_keys: Mapping[str, ServedKeys]
    # certificate name -> earliest notAfter (unix seconds).
    cert_expiry: Mapping[str, float]

    @property
    def targets(self) -> tuple[Target, ...]:
        return self.resolution.targets


class NetworkChecker:
    def __init__(self, io: RunIO, settings: RunSettings) -> None:
        self._io = io
        self._settings = settings
        self.resolver = ServerNameResolver(
            io.resolver, io.http, wall_clock=io.wall_clock
        )
        self._prober = TargetProber(
            io.http, io.tls, trust=io.trust, issuers=io.issuers, connections=io.targets
        )

    async def check(self, deadline: Deadline) -> NetworkFindings:
        resolution = await self.resolver.resolve(
            self._settings.server_name, deadline.share(DISCOVERY_SHARE)
        )
        probes = await self._prober.probe_targets(resolution.targets, deadline)
        now = self._io.wall_clock()
        try:
            judgement = judge_network(
                resolution,
                probes,
                JudgeSettings(
                    trust=self._io.trust,
                    trust_error=self._io.trust_error,
                    cert_expiry_warning_days=self._settings.cert_expiry_warning_days,
                    ip_ranges=self._settings.ip_ranges,
                ),
                now=now,
            )
            tester = render_federation_tester(resolution, probes, judgement, now=now)
        except Exception as e:  # a bug must not take the report down
            logger.warning(
                "synapse_fedhealth: the network checks failed while judging: %s: %s",
                type(e).__name__,
                e,
            )
            return NetworkFindings(
                resolution=resolution,
                checks=(engine_error(f"{type(e).__name__}: {e}"),),
                federation_tester={},
                served_keys={},
                cert_expiry={},
            )
        checks = judgement.checks
        if resolution.error:
            checks += (engine_error(resolution.error),)
        return NetworkFindings(
            resolution=resolution,
            checks=checks,
            federation_tester=tester,
            served_keys=judgement.served_keys,
            cert_expiry=judgement.cert_expiry,
        )
