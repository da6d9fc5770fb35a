"""`FedHealthModule` with injected bugs, for tests/integration/test_containment.py.

Loaded by a real Synapse through `modules:` as
`tests.integration.faulty_module.FaultyModule` (PYTHONPATH = the repo root).
Its config is the module's, plus `faults`: a list of

- "family": one more check family, whose `run()` raises;
- "lint": the `config.public_baseurl` config check raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from synapse_fedhealth import FedHealthModule
from synapse_fedhealth.checks import config_lint
from synapse_fedhealth.config import FedHealthConfig
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.families import FamilyFactory
from synapse_fedhealth.homeserver import HomeserverSnapshot
from synapse_fedhealth.runner import CheckFamily, FamilyOutcome
from synapse_fedhealth.settings import RunSettings
from synapse_fedhealth.wiring import RunIO

if TYPE_CHECKING:
    from synapse.module_api import ModuleApi

FAULTS = ("family", "lint")
FAMILY_CHECK_ID = "faulty.injected"
FAMILY_MESSAGE = "injected failure inside a check family"
LINT_CHECK_ID = "config.public_baseurl"
LINT_MESSAGE = "injected failure inside a config check"


class InjectedFault(RuntimeError):
    pass


class RaisingFamily:
    """A check family whose run raises, after yielding to the reactor once."""

    name = "faulty"
    check_ids: Sequence[str] = (FAMILY_CHECK_ID,)

    async def run(self, deadline: Deadline) -> FamilyOutcome:
        raise InjectedFault(FAMILY_MESSAGE)


class WithRaisingFamily:
    """The module's own families, plus one that raises."""

    def __init__(self, inner: FamilyFactory) -> None:
        self._inner = inner

    def first(self, io: RunIO, settings: RunSettings) -> Sequence[CheckFamily]:
        return [*self._inner.first(io, settings), RaisingFamily()]

    def follow_ups(
        self, io: RunIO, settings: RunSettings, network: Any
    ) -> Sequence[CheckFamily]:
        return self._inner.follow_ups(io, settings, network)


def _raising_lint_check(*args: Any, **kwargs: Any) -> Any:
    raise InjectedFault(LINT_MESSAGE)


class FaultyModule(FedHealthModule):
    def __init__(
        self, config: tuple[tuple[str, ...], FedHealthConfig], api: ModuleApi
    ) -> None:
        faults, real_config = config
        self._faults = faults
        if "lint" in faults:
            # lint_config looks its checks up at call time.
            config_lint.check_public_baseurl = _raising_lint_check
        super().__init__(real_config, api)

    @staticmethod
    def parse_config(  # type: ignore[override]
        config: dict[str, Any],
    ) -> tuple[tuple[str, ...], FedHealthConfig]:
        config = dict(config)
        faults = tuple(str(f) for f in config.pop("faults", []))
        unknown = set(faults) - set(FAULTS)
        if unknown:
            from synapse.module_api.errors import ConfigError

            raise ConfigError(f"unknown faults {sorted(unknown)}", path=("faults",))
        return faults, FedHealthModule.parse_config(config)

    def families_for(self, snapshot: HomeserverSnapshot | None) -> FamilyFactory:
        families = super().families_for(snapshot)
        if "family" in self._faults:
            return WithRaisingFamily(families)
        return families
