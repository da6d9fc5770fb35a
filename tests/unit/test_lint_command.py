"""The `lint` subcommand: exit statuses on configs it can't use (SPEC 2.5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synapse_fedhealth.__main__ import main
from synapse_fedhealth.lint_command import EXIT_UNREADABLE


def _lint(tmp_path: Path, modules_yaml: str) -> int:
    path = tmp_path / "homeserver.yaml"
    path.write_text(
        "server_name: example.com\nreport_stats: false\n" + modules_yaml + "\n"
    )
    return main(["lint", "-c", str(path)])


@pytest.mark.parametrize(
    ("modules_yaml", "named"),
    [
        ("modules: 5", "modules: expected a list"),
        ('modules: "synapse_fedhealth.FedHealthModule"', "modules: expected a list"),
        ("modules: {module: synapse_fedhealth.FedHealthModule}", "modules: expected"),
        ("modules: [5]", "modules.<item 0>: expected a mapping"),
        ("modules: [{config: {}}]", "modules.<item 0>.module: expected a string"),
        ("modules: [{module: 5}]", "modules.<item 0>.module: expected a string"),
        ("modules: [{module: x, config: 7}]", "modules.<item 0>.config: expected a"),
        (
            "modules: [{module: a.B}, {module: synapse_fedhealth.FedHealthModule, "
            "config: [timeout]}]",
            "modules.<item 1>.config: expected a",
        ),
    ],
)
def test_malformed_modules_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    modules_yaml: str,
    named: str,
) -> None:
    assert _lint(tmp_path, modules_yaml) == EXIT_UNREADABLE
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("synapse_fedhealth lint: ")
    assert named in lines[0]


@pytest.mark.parametrize(
    "modules_yaml",
    [
        "",
        "modules:",
        "modules: []",
        "modules: [{module: other.Module, config: {anything: 1}}]",
        "modules: [{module: synapse_fedhealth.FedHealthModule}]",
        "modules: [{module: synapse_fedhealth.FedHealthModule, config: null}]",
    ],
)
def test_usable_modules_are_linted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], modules_yaml: str
) -> None:
    # No listener and no signing key: the lint itself fails (1), but it ran.
    assert _lint(tmp_path, modules_yaml) == 1
    out, err = capsys.readouterr()
    assert "config.federation_listener" in out
    assert err == ""
