"""The Synapse releases we are tested with: one range, stated the same way in
pyproject.toml, the docs and the start-up warning."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from synapse_fedhealth import homeserver
from synapse_fedhealth.synapse_versions import (
    NEWEST_TESTED_SERIES,
    OLDEST_SUPPORTED,
    release_of,
    supported_range,
    version_warning,
)

from .test_module import _module

REPO = Path(__file__).resolve().parents[2]


def _synapse_requirement() -> str:
    """The `matrix-synapse` line of the runtime dependencies (read as text:
    tomllib is new in Python 3.11, the package supports 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    dependencies = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    [requirement] = re.findall(r'"(matrix-synapse[^"]*)"', dependencies)
    return str(requirement)


def test_pyproject_floor_is_the_oldest_supported_release() -> None:
    assert _synapse_requirement() == f"matrix-synapse>={OLDEST_SUPPORTED}"


def test_the_oldest_env_installs_the_floor_with_its_constraints() -> None:
    tox = (REPO / "tox.ini").read_text()
    constraints = REPO / "constraints" / f"synapse-{OLDEST_SUPPORTED}.txt"
    assert f"matrix-synapse=={OLDEST_SUPPORTED}" in tox
    assert f"constraints/synapse-{OLDEST_SUPPORTED}.txt" in tox
    assert f"matrix-synapse=={OLDEST_SUPPORTED}\n" in constraints.read_text()


@pytest.mark.parametrize("doc", ["README.md", "docs/install.md"])
def test_the_docs_state_the_range(doc: str) -> None:
    assert f"Synapse {supported_range()}" in (REPO / doc).read_text()


@pytest.mark.parametrize(
    ("version", "release"),
    [
        ("1.163.2", (1, 163, 2)),
        ("1.164.0rc1", (1, 164, 0)),
        ("1.99", (1, 99, 0)),
        ("v1.100.1", (1, 100, 1)),
        ("unknown", None),
        ("", None),
    ],
)
def test_release_of(version: str, release: tuple[int, int, int] | None) -> None:
    assert release_of(version) == release


def test_below_the_floor_warns_naming_the_range() -> None:
    warning = version_warning("1.99.0")
    assert warning is not None
    assert "Synapse 1.99.0, older than that" in warning
    assert supported_range() in warning
    assert f"Upgrade Synapse to {OLDEST_SUPPORTED}" in warning


def test_above_the_newest_tested_series_warns_naming_the_range() -> None:
    major, minor, _ = release_of(NEWEST_TESTED_SERIES) or (0, 0, 0)
    newer = f"{major}.{minor + 1}.0rc1"
    warning = version_warning(newer)
    assert warning is not None
    assert f"Synapse {newer}, newer than that" in warning
    assert supported_range() in warning


@pytest.mark.parametrize(
    "version",
    [OLDEST_SUPPORTED, f"{NEWEST_TESTED_SERIES}.0", f"{NEWEST_TESTED_SERIES}.9"],
)
def test_inside_the_range_no_warning(version: str) -> None:
    assert version_warning(version) is None


def test_a_version_that_names_no_release_gives_no_warning() -> None:
    assert version_warning("unknown") is None


def _startup_warnings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, version: str
) -> list[str]:
    monkeypatch.setattr(homeserver, "synapse_version", lambda: version)
    with caplog.at_level(logging.WARNING, logger="synapse_fedhealth"):
        _module(monkeypatch)
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "is tested with Synapse" in r.getMessage()
    ]


@pytest.mark.parametrize(("version", "side"), [("1.99.0", "older"), ("9.0.0", "newer")])
def test_start_up_logs_one_line_outside_the_range(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    version: str,
    side: str,
) -> None:
    [line] = _startup_warnings(monkeypatch, caplog, version)
    assert f"Synapse {version}, {side} than that" in line
    assert supported_range() in line


def test_start_up_logs_nothing_inside_the_range(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert _startup_warnings(monkeypatch, caplog, OLDEST_SUPPORTED) == []


def test_the_running_synapse_version_is_read() -> None:
    import synapse

    assert homeserver.synapse_version() == synapse.__version__
    assert release_of(homeserver.synapse_version()) is not None
