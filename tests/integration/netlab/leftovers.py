"""What a lab left behind when its test process was killed (SIGKILL: no
teardown, no atexit): nginx workers, network namespaces, nftables tables.

Each component records what it creates in a small file under
`<tmp>/netlab-state/`, named after the owning process, and deletes the record
when it cleans up. `sweep()` (run when a Lab or the fixtures start) removes
what dead owners left: by the recorded process group, namespace name or
table name only, never by a pattern. An owner is dead when its PID is gone
or belongs to a process started at another time.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

STATE_DIR = Path(tempfile.gettempdir()) / "netlab-state"
COMMAND_TIMEOUT_S = 10.0


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_OWNER = {"pid": os.getpid(), "start": _start_time(os.getpid())}


def record(kind: str, **data: Any) -> Path | None:
    """Note a created resource; returns the record to pass to forget()."""
    try:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        path = STATE_DIR / f"{os.getpid()}-{kind}-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps({"owner": _OWNER, "kind": kind, **data}))
        return path
    except OSError:
        return None


def forget(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _owner_alive(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    return _start_time(pid) == owner.get("start")


def _processes_in_group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid):
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _clean(data: dict[str, Any]) -> None:
    kind = data.get("kind")
    if kind == "nginx":
        pgid = data.get("pgid")
        if isinstance(pgid, int):
            for pid in _processes_in_group(pgid):
                # Only nginx processes of that group: a reused group id of
                # something else is left alone.
                if "nginx" in _cmdline(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
    elif kind == "netns":
        name = data.get("name")
        if isinstance(name, str) and name.startswith("netlab-"):
            subprocess.run(
                ["ip", "netns", "del", name],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
    elif kind == "nft":
        table = data.get("table")
        if isinstance(table, str) and table.startswith("netlab_"):
            subprocess.run(
                ["nft", "delete", "table", "inet", table],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )


def sweep() -> int:
    """Clean up after dead owners; returns how many records were handled."""
    handled = 0
    try:
        paths = sorted(STATE_DIR.glob("*.json"))
    except OSError:
        return 0
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or _owner_alive(data.get("owner") or {}):
            continue
        try:
            _clean(data)
        except (OSError, subprocess.TimeoutExpired):
            continue
        path.unlink(missing_ok=True)
        handled += 1
    return handled
