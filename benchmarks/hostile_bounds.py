"""Run every hostile-network scenario and print the table of
docs/reliability.md: behaviour, check, result, bound, measured worst case.

    python benchmarks/hostile_bounds.py [--runs N] [--only KEY ...]

Uses the scenarios of tests/integration/hostile_scenarios.py (the same ones
the tests assert), all on loopback. Binding port 443 on 127.x addresses needs
root (as the integration tests do). Exit status 1 if any run broke a bound or
an expectation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from tests.integration.hostile_scenarios import (
    SCENARIOS,
    Measured,
    format_table,
    run_scenario,
)


async def _main(reactor: Any, runs: int, only: list[str]) -> int:
    threadpool = ThreadPool(minthreads=1, maxthreads=8, name="hostile-bench")
    threadpool.start()
    worst: list[Measured] = []
    broken: list[str] = []
    started = time.monotonic()
    try:
        for scenario in SCENARIOS:
            if only and scenario.key not in only:
                continue
            results = []
            for _ in range(runs):
                measured = await run_scenario(scenario, reactor, threadpool)
                results.append(measured)
                broken.extend(f"{scenario.key}: {w}" for w in measured.verify())
            slowest = max(results, key=lambda m: m.elapsed_s)
            heaviest = max(results, key=lambda m: m.peak_bytes)
            # The row shows the worst time and the worst memory seen.
            worst.append(
                Measured(
                    scenario=scenario,
                    findings=slowest.findings,
                    elapsed_s=slowest.elapsed_s,
                    peak_bytes=heaviest.peak_bytes,
                    problems=slowest.problems,
                    report_json=slowest.report_json,
                )
            )
            print(
                f"{scenario.key:28} {slowest.elapsed_s:6.2f} s "
                f"{heaviest.peak_bytes / 1024:8.0f} KiB",
                file=sys.stderr,
            )
    finally:
        threadpool.stop()
    print(format_table(worst))
    print(
        f"\n{len(worst)} scenarios x {runs} run(s) in "
        f"{time.monotonic() - started:.0f} s; worst time "
        f"{max(m.elapsed_s for m in worst):.2f} s, worst peak memory "
        f"{max(m.peak_bytes for m in worst) / 1024:.0f} KiB"
    )
    for line in broken:
        print("BROKEN:", line, file=sys.stderr)
    return 1 if broken else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs per scenario")
    parser.add_argument("--only", nargs="*", default=[], help="scenario keys")
    args = parser.parse_args()

    async def run(reactor: Any) -> None:
        if await _main(reactor, args.runs, args.only):
            raise RuntimeError("some scenario broke its bound or expectation")

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
