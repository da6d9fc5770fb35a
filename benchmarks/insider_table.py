"""The insider-check and monitoring table: what the module's insider checks
say about real setups (nginx variants, another Synapse behind the proxy, a
real notary), what one run costs, and how the periodic run behaves.

    python benchmarks/insider_table.py            # runs the suites (root: netlab)
    python benchmarks/insider_table.py --rows F   # only renders saved rows

Runs tests/integration/test_insider.py and test_monitoring.py with
FEDHEALTH_INSIDER_ROWS set, then writes benchmarks/results/insider.md.
Everything runs on loopback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("tests/integration/test_insider.py", "tests/integration/test_monitoring.py")
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "insider.md"
ROWS_ENV = "FEDHEALTH_INSIDER_ROWS"
SUITE_TIMEOUT_S = 10 * 60
SUMMARY_CHARS = 150


def run_suites(rows_path: Path) -> tuple[int, float, str]:
    env = dict(os.environ)
    env[ROWS_ENV] = str(rows_path)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
        check=False,
    )
    tail = "\n".join(done.stdout.strip().splitlines()[-3:])
    return done.returncode, time.monotonic() - began, tail


def _cell(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _short(text: object, limit: int = SUMMARY_CHARS) -> str:
    value = str(text or "")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def render(rows: Sequence[Mapping[str, Any]], suite_line: str) -> str:
    checks = [r for r in rows if r.get("check", "").startswith(("federation.", "proxy.", "client.", "connection."))
              and "status" in r and "summary" in r]  # fmt: skip
    costs = [r for r in rows if r.get("check") == "(run cost)"]
    fetches = [r for r in rows if "fetched_first" in r]
    monitoring = [r for r in rows if r.get("check") == "(periodic runs)"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Insider checks and monitoring against real components",
        "",
        f"Generated {now} on {platform.node()} by `benchmarks/insider_table.py` "
        f"({suite_line}).",
        "",
        "Setup: a real Synapse 1.163 running the module behind nginx (TLS from "
        "the lab's CA, names in the lab's DNS zone on 127.x:53, every address on "
        "loopback); each row is a fresh run through "
        "`GET /_synapse/fedhealth?refresh=true`. Lab addresses are loopback, so "
        "a working setup is `degraded` (discovery.addresses warns).",
        "",
        "## Scenarios",
        "",
        "| scenario | check | target | status | reason | HTTP | summary | verdict | run ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in checks:
        out.append(
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    r["scenario"],
                    f"`{r['check']}`",
                    r.get("target"),
                    f"**{r['status']}**",
                    r.get("reason"),
                    r.get("http_status"),
                    _short(r.get("summary")),
                    r.get("verdict"),
                    r.get("duration_ms"),
                )
            )
            + " |"
        )
    out += [
        "",
        "## Cost of one run",
        "",
        "One run as the periodic run does it (same runner; here through the "
        "endpoint). `duration_ms` is the report's own; HTTP requests are the "
        "lines nginx's access log gained (every vhost of the lab: ours and the "
        "notary's, including the notary's own fetch of our key); DNS queries are "
        "those the lab's DNS server logged (the module's and, with a notary, the "
        "notary Synapse's).",
        "",
        "| run | duration_ms | endpoint wall ms | HTTP requests | DNS queries |",
        "|---|---|---|---|---|",
    ]
    for r in costs:
        out.append(
            f"| {_cell(r['scenario'])} | {r['duration_ms']} | {r['endpoint_wall_ms']} "
            f"| {r['http_requests']} | {r['dns_queries']} |"
        )
    for r in costs:
        out += ["", f"**{r['scenario']}**", ""]
        out.append(
            "- HTTP: " + ", ".join(f"`{k}` ×{v}" for k, v in r["http_by_path"].items())
        )
        out.append(
            "- DNS: " + ", ".join(f"`{k}` ×{v}" for k, v in r["dns_by_name"].items())
        )
    if fetches:
        out += [
            "",
            "## Does the notary query force a fresh fetch?",
            "",
            "Counted in our Synapse's access log: GET /_matrix/key/v2/server per run "
            "(one is our own federation.keys probe, any other is the notary's fetch).",
            "",
            "| first run (notary has no copy) | run right after | minimum_valid_until_ts asked | valid_until_ts returned |",
            "|---|---|---|---|",
        ]
        for r in fetches:
            out.append(
                f"| {r['fetched_first']} | {r['fetched_again']} "
                f"| now + {(r['minimum_valid_until_ts'] - r['now_ms']) / 3_600_000:.2f} h "
                f"| now + {(r['valid_until_ts'] - r['now_ms']) / 3_600_000:.2f} h |"
            )
        out += [
            "",
            "The minimum asked is the `valid_until_ts` of the key response our "
            "public address serves now (seen by `federation.keys` in the same "
            "run). A copy as new as that satisfies it, so the second run is "
            "answered from the notary's cache (no fetch); an older copy makes "
            "the notary fetch again. A notary's answer can't tell a fresh fetch "
            "from a cached copy of the same response (the same bytes until our "
            "server refreshes it, at most half a key_refresh_interval later), so "
            "after a successful fetch `federation.notary` keeps saying ok until "
            "that refresh (up to ~12 h with the default 1 d) while the other "
            "checks say broken. A notary without our current response (first "
            "row group above) does fail.",
        ]
    for r in monitoring:
        out += [
            "",
            "## Periodic run (monitoring)",
            "",
            f"`interval: {r['interval_s']}s`, `startup_delay: 1s`, `timeout: 3s`; "
            f"working → upstream down (nginx 502) → repaired; the test took "
            f"{r['test_wall_s']} s.",
            "",
            f"- run durations (s, from `synapse_fedhealth_run_duration_seconds`): "
            f"{', '.join(str(d) for d in r['run_duration_s'])}",
            f"- `synapse_fedhealth_last_run_timestamp_seconds`: "
            f"{', '.join(f'{t:.3f}' for t in r['last_run_ts'])}",
            f"- checks that got worse: {', '.join(r['went_worse'])}",
            "- the log's transition and verdict lines after the first report:",
            "",
            "```",
            *r["transition_lines"],
            "```",
        ]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=Path, help="render these saved rows only")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.rows is not None:
        rows = json.loads(args.rows.read_text(encoding="utf-8"))
        suite_line = f"rows from {args.rows.name}"
        status = 0
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows_path = Path(tmp) / "rows.json"
            status, wall, tail = run_suites(rows_path)
            rows = (
                json.loads(rows_path.read_text(encoding="utf-8"))
                if rows_path.exists()
                else []
            )
            suite_line = (
                f"suites: {tail.splitlines()[-1] if tail else '?'}, {wall:.0f} s"
            )
    args.output.write_text(render(rows, suite_line), encoding="utf-8")
    print(f"wrote {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
