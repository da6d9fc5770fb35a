"""The pure parts of benchmarks/performance.py: statistics, wrk's output,
targets, the Markdown table, the py-spy summary and the probe module's heap
trace (the benchmark itself runs only by hand: it needs the lab)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import performance

from tests.support.perf_stats import median, percentile, ratio

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8008/health
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.71ms    2.01ms  30.12ms   93.00%
  Latency Distribution
     50%    3.35ms
     75%    3.80ms
     90%    4.61ms
     99%   12.78ms
  10583 requests in 5.00s, 1.33MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   2115.43
Transfer/sec:    272.69KB
"""


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert math.isnan(percentile([], 0.5))
    assert median([3.0, 1.0, 2.0]) == 2
    assert math.isnan(ratio(1.0, 0.0))
    assert ratio(3.0, 2.0) == 1.5


def test_parse_wrk() -> None:
    load = performance.parse_wrk(WRK_OUTPUT)
    assert load.rps == 2115.43
    assert load.p99_ms == 12.78
    assert load.requests == 10583
    assert load.errors == 3
    assert (
        performance.parse_wrk(WRK_OUTPUT.replace("12.78ms", "1.20s")).p99_ms == 1200.0
    )


def test_targets_and_table_round_trip() -> None:
    rows = [
        performance.Row(2, "16 / 1 A records", 8.1234, "x", "<=", 1.5),
        performance.Row(4, "ratio", 0.6, "x", ">=", 0.5),
        performance.Row(1, "agent", 12.05, "ms", note="cold"),
        performance.Row(6, "broken item", math.nan, ""),
    ]
    assert [r.met for r in rows] == [False, True, None, None]
    table = performance.render_markdown(rows)
    lines = table.splitlines()
    assert lines[2] == "| 1 | agent (cold) | 12.05 ms |  |  |"
    assert lines[3] == "| 2 | 16 / 1 A records | 8.12x | <= 1.5x | **no** |"
    assert lines[4] == "| 4 | ratio | 0.60x | >= 0.5x | yes |"
    again = [performance.Row.from_json(r.to_json()) for r in rows]
    assert performance.render_markdown(again) == table


def test_speedscope_summary_weights_are_seconds() -> None:
    data = {
        "shared": {
            "frames": [
                {"name": "main", "file": "/x/site-packages/synapse/app.py", "line": 1},
                {"name": "handshake", "file": "/x/site-packages/OpenSSL/SSL.py", "line": 2},
                {"name": "probe", "file": "/w/synapse_fedhealth/engine/probes.py", "line": 3},
            ]
        },
        "profiles": [
            {"samples": [[0, 1], [0, 2, 1], [0, 2]], "weights": [0.3, 0.1, 0.1]},
        ],
    }  # fmt: skip
    summary = performance.summarise_speedscope(data)
    assert summary.samples == 3
    assert math.isclose(summary.cpu_s, 0.5)
    frame, share = summary.own[0]
    assert frame == "handshake (OpenSSL/SSL.py:2)"
    assert math.isclose(share, 0.8)
    assert dict(summary.total)["probe (synapse_fedhealth/engine/probes.py:3)"] == 0.4
    assert "synapse_fedhealth by total time" in summary.text()


def test_heap_trace_counts_what_is_still_held_since_start() -> None:
    from tests.support.perf_probe_module import HeapTrace

    trace = HeapTrace()
    trace.start()
    try:
        kept = [str(i) * 50 for i in range(2_000)]
        size = sys.getsizeof(kept) + sum(sys.getsizeof(k) for k in kept)
        dropped = [str(i) * 50 for i in range(2_000)]
        del dropped
        first = trace.read()
        # This file is neither the module's, Synapse's nor Twisted's.
        assert size <= first["held_bytes_by_owner"]["other"] < 1.5 * size
        assert any(__file__ in t["where"] for t in first["top"])

        trace.start()  # a new baseline: `kept` is old news
        again = trace.read()
        assert again["held_bytes_by_owner"].get("other", 0) < 20_000
        assert len(kept) == 2_000
    finally:
        trace.stop()
    assert not trace.started


def test_heap_owner_of_a_file() -> None:
    from tests.support.perf_probe_module import _owner

    site = "/venv/lib/python3.11/site-packages"
    assert _owner("/repo/synapse_fedhealth/net/tls.py") == "module"
    assert _owner(f"{site}/synapse/util/caches/lrucache.py") == "synapse"
    assert _owner(f"{site}/twisted/web/_newclient.py") == "twisted"
    assert _owner("/repo/tests/support/perf_probe_module.py") == "benchmark probe"
    assert _owner("/usr/lib/python3.11/urllib/parse.py") == "other"
