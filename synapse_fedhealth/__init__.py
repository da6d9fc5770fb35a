"""synapse-fedhealth: checks from inside Synapse whether federation works.

`FedHealthModule` is the only public class: a thin facade that wires the
snapshot of Synapse's config, the checks, the runner, the admin endpoint, the
log and the metrics together. Everything else is private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synapse_fedhealth._version import __version__

if TYPE_CHECKING:
    from synapse_fedhealth.module import FedHealthModule

__all__ = ["FedHealthModule", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `python -m synapse_fedhealth check` never
    # imports Synapse (it must start probing within a second).
    if name == "FedHealthModule":
        from synapse_fedhealth.module import FedHealthModule

        return FedHealthModule
    raise AttributeError(name)
