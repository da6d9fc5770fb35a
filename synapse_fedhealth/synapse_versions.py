"""The Synapse releases this module is tested with: the one place that says so.

pyproject.toml's `matrix-synapse>=` floor, the README, docs/install.md and the
start-up warning all state this range (tests/unit/test_synapse_versions.py
checks pyproject against it). The floor is the oldest release the suite
passes on, with the dependency versions of its time
(constraints/synapse-<floor>.txt, the `oldest` tox env); the newest is the
latest release series the suite was run on.
"""

from __future__ import annotations

import re

OLDEST_SUPPORTED = "1.100.0"
# A release series: its patch releases are bug and security fixes, tested or
# not, and a warning would only make admins hesitate to install them.
NEWEST_TESTED_SERIES = "1.163"

_RELEASE_RE = re.compile(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def release_of(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a Synapse version string ("1.163.2",
    "1.164.0rc1"), or None when it is not one."""
    match = _RELEASE_RE.match(version)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def supported_range() -> str:
    return f"{OLDEST_SUPPORTED} to {NEWEST_TESTED_SERIES}.x"


def version_warning(running: str) -> str | None:
    """The start-up warning for a Synapse outside the tested range, or None
    inside it (and for a version string that says no release)."""
    release = release_of(running)
    oldest = release_of(OLDEST_SUPPORTED)
    newest = release_of(NEWEST_TESTED_SERIES)
    assert oldest is not None and newest is not None
    if release is None:
        return None
    if release < oldest:
        return (
            f"synapse_fedhealth is tested with Synapse {supported_range()}; this is "
            f"Synapse {running}, older than that: some checks may fail or be "
            f"missing. Upgrade Synapse to {OLDEST_SUPPORTED} or later."
        )
    if release[:2] > newest[:2]:
        return (
            f"synapse_fedhealth is tested with Synapse {supported_range()}; this is "
            f"Synapse {running}, newer than that: if a check misbehaves, look for a "
            "newer synapse-fedhealth."
        )
    return None
