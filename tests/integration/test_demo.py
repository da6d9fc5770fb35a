"""The README's first command with its own world (as root): a healthy setup,
nginx serving the leaf without its intermediate, the fix, and nothing left
running afterwards.

It runs the demo's module entry (`python -m tests.support.demo`, what
`bash .ci/demo` execs once the venv is there) with TMPDIR inside the test's
directory, so the world's files (nginx's prefix) and every process the demo
starts can be told apart from anyone else's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import demo_world

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 120
DEMO_BUDGET_S = 90  # "about a minute", with room for a loaded machine


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


def _section(output: str, start: str, end: str) -> str:
    began = output.index(start)
    return output[began : output.index(end, began)]


def test_demo_world(tmp_path: Path) -> None:
    why_not = demo_world.unavailable_reason()
    if why_not is not None:
        pytest.skip(f"the demo's world can't be built here: {why_not}")
    world_tmp = tmp_path / "tmp"
    world_tmp.mkdir()
    workdir = tmp_path / "demo-data"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["TMPDIR"] = str(world_tmp)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=REPO,  # `tests.support` is imported from the repository root
        env=env,
    )
    took_s = time.monotonic() - began
    out = done.stdout
    assert "Traceback" not in out + done.stderr, out + done.stderr
    assert "No world of its own" not in out, out

    # Everything stopped: Synapse, nginx (its prefix is under TMPDIR), the
    # namespace; the world's temporary directory is gone.
    assert _processes_mentioning(str(tmp_path)) == []
    netns = re.search(r"network namespace (netlab-[0-9a-f]+)", out)
    assert netns is not None, out
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert netns.group(1) not in listed
    assert [p.name for p in world_tmp.iterdir() if p.name != "netlab-state"] == []
    assert list(world_tmp.glob("netlab-state/*.json")) == []

    assert "A private federation: Synapse's ip_range_whitelist allows 10.213." in out
    healthy = _section(out, "== 1/3 healthy setup", "== 2/3 break:")
    broken = _section(out, "== 2/3 break:", "== 3/3 fix:")
    fixed = _section(out, "== 3/3 fix:", "== Stopping")
    assert "leaf certificate without its intermediate" in broken
    assert "missing_intermediate" not in healthy
    # The report (its text form) names the check and the missing certificate,
    # and the narration gives the check's reason and its fix.
    assert re.search(r"^FAIL\s+tls\.certificate", broken, re.MULTILINE), broken
    assert "-> tls.certificate fails with reason missing_intermediate" in broken
    assert "fedhealth test intermediate" in broken
    assert "fullchain" in broken.split("-> tls.certificate", 1)[1], broken
    for line in out.splitlines():
        assert len(line) <= 80, line

    # Green before the break and after the fix: every check ok or skipped.
    for section in (healthy, fixed):
        assert not re.search(r"^(FAIL|WARN) ", section, re.MULTILINE), section
    assert "Start-up check: federation OK\n" in out
    assert "Verdicts: healthy ok, broken broken, fixed ok" in out
    assert done.returncode == 0, out + done.stderr
    assert took_s < DEMO_BUDGET_S, f"the demo took {took_s:.0f} s"
