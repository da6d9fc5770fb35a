"""`python -m build` gives an sdist and a wheel that pass `twine check
--strict`; the wheel is the module only, with the check reference as data."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 300


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The default route: the sdist first, then the wheel built from it, so
    # the sdist is proven complete.
    _run("-m", "build", "--outdir", str(out), str(ROOT), cwd=out)
    return out


def test_sdist_and_wheel_pass_twine_check_strict(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert sorted(p.suffix for p in files) == [".gz", ".whl"], files
    done = _run("-m", "twine", "check", "--strict", *map(str, files), cwd=dist)
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_wheel_is_the_module_with_its_docs(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {n for n in top if not n.endswith(".dist-info")} == {"synapse_fedhealth"}
    assert not [n for n in names if "/tests/" in n or "demo" in n or "benchmark" in n]
    shipped = zipfile.ZipFile(wheel).read("synapse_fedhealth/_docs/checks.md")
    assert shipped == (ROOT / "docs" / "checks.md").read_bytes()
    assert "synapse_fedhealth/py.typed" in names


def test_sdist_carries_the_docs_as_a_file(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith("_docs/checks.md")]
        # A regular file, not the repository's symlink.
        assert member.isfile(), member
