"""The performance benchmark: what one run of the module costs next to
Synapse's own federation client, how it scales with the number of addresses,
what it does to the reactor, how fast the cached report is served, what the
module adds to start-up and memory, and when a filtered port ends a run.

    python benchmarks/performance.py                 # everything (root: the lab)
    python benchmarks/performance.py --only 2,4      # some items
    python benchmarks/performance.py --quick         # fewer repetitions
    python benchmarks/performance.py --profile DIR   # + py-spy of items 1, 2 and 4
    python benchmarks/performance.py --markdown-only benchmarks/results/performance.json

Items (see docs/performance.md for the targets):
 1. a full run (`?refresh=true`, `duration_ms` and wall time) vs one cold
    `GET /_matrix/federation/v1/version` through a fresh `MatrixFederationAgent`
    inside the same Synapse (tests/support/perf_probe_module.py);
 2. full-run time with 1, 4 and 16 A records behind the server name;
 3. reactor lag of a 1 ms LoopingCall in that Synapse, and `/health` latency
    from outside, while runs (16 targets) are in flight;
 4. requests/s and p99 of the cached `GET /_synapse/fedhealth` vs `/health`
    on the same listener (wrk when installed, else a Python load generator);
 5. start-up to `/health` with and without the module (benchmarks/startup_time.py),
    resident memory, and memory after 1 and 10 runs;
 6. a run whose only address is a filtered port ends at `timeout`.

One real Synapse with the module sits behind nginx (TLS from the lab's CA) on
loopback; its names resolve through the lab's DNS server on 127.x:53 (for
the module through `dns_servers`, for Synapse itself through a private
/etc/resolv.conf, as the lab's peer does). Needs root, nginx and nftables.
Writes benchmarks/results/performance.json and prints the Markdown table that
docs/performance.md shows.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import attr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import startup_time  # noqa: E402

from tests.integration.netlab.lab import Lab  # noqa: E402
from tests.integration.netlab.nginx import (  # noqa: E402
    Vhost,
    WellKnown,
    well_known_server,
)
from tests.integration.netlab.peer import (  # noqa: E402
    SHARED_SECRET,
    PeerSynapse,
    base_config,
)
from tests.support.perf_probe_module import (  # noqa: E402
    AGENT_PATH,
    HEAP_PATH,
    LAG_PATH,
    REPLAY_PATH,
)
from tests.support.perf_stats import median, percentile, ratio  # noqa: E402
from tests.support.synapse_process import (  # noqa: E402
    free_port,
    http_request,
    register_user,
)

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "performance.json"
MODULE = "synapse_fedhealth.FedHealthModule"
PROBE_MODULE = "tests.support.perf_probe_module.PerfProbeModule"
ENDPOINT = "/_synapse/fedhealth"
HEAP_RUNS = 40
# What "no growth" allows the module's own code to still hold: a few
# report-sized strings of slack, not a per-run record.
HEAP_MODULE_LIMIT_KIB = 16
# The lab's own requests to nginx (its readiness probe), not the module's.
NETLAB_CONTROL = "/__netlab/"
WHOAMI_PATH = "/_matrix/client/v3/account/whoami"
SERVER_NAME = "perfbench.test"
RUN_TIMEOUT_S = 10.0  # the module's `timeout` (its default)
REQUEST_TIMEOUT_S = 60.0
SCALES = (1, 4, 16)
HEALTH_POLL_S = 0.02
LOAD_CONNECTIONS = 8
ITEMS = (1, 2, 3, 4, 5, 6)
MB = 1024 * 1024
# Between the timed runs of items 1 and 2: more than Synapse's federation
# ratelimiter window (`rc_federation.window_size`, 1 s), so each run starts
# with our own origin's budget unused, as a periodic run does. Item 3 runs
# back to back on purpose.
RUN_GAP_S = 1.1
RATELIMITED_RE = re.compile(r"Ratelimiter\(\S+\): queueing request")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Reps:
    """How many times each item repeats (`--quick`: fewer)."""

    runs: int  # items 1 and 2, per variant
    reactor_runs: int  # item 3
    load_s: float  # item 4, per URL
    starts: int  # item 5, per variant
    filtered_runs: int  # item 6

    @classmethod
    def of(cls, quick: bool) -> Reps:
        if quick:
            return cls(runs=3, reactor_runs=4, load_s=3.0, starts=3, filtered_runs=1)
        return cls(runs=7, reactor_runs=10, load_s=5.0, starts=5, filtered_runs=2)


@attr.s(slots=True, auto_attribs=True)
class Row:
    """One line of the table: a figure, its value and, when it has one, its
    target (`limit` compared with `value` by `op`)."""

    item: int
    figure: str
    value: float
    unit: str
    op: str | None = None  # "<=" or ">="
    limit: float | None = None
    note: str = ""

    @property
    def target(self) -> str:
        if self.op is None or self.limit is None:
            return ""
        if self.unit == "x":
            return f"{self.op} {self.limit:g}x"
        return f"{self.op} {self.limit:g} {self.unit}"

    @property
    def met(self) -> bool | None:
        if self.op is None or self.limit is None or math.isnan(self.value):
            return None
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "figure": self.figure,
            "value": None if math.isnan(self.value) else round(self.value, 3),
            "unit": self.unit,
            "target": self.target or None,
            "met": self.met,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        target = data.get("target") or ""
        op, limit = None, None
        match = re.match(r"(<=|>=) ([\d.]+)", target)
        if match:
            op, limit = match[1], float(match[2])
        value = data.get("value")
        return cls(
            int(data["item"]),
            str(data["figure"]),
            math.nan if value is None else float(value),
            str(data.get("unit", "")),
            op,
            limit,
            str(data.get("note", "")),
        )


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2f}"


def render_markdown(rows: Sequence[Row]) -> str:
    """The table of docs/performance.md."""
    lines = [
        "| # | figure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r.item):
        unit = row.unit if row.unit not in ("",) else ""
        value = f"{_number(row.value)}{' ' + unit if unit and unit != 'x' else ''}"
        if unit == "x" and not math.isnan(row.value):
            value = f"{row.value:.2f}x"
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        figure = row.figure + (f" ({row.note})" if row.note else "")
        lines.append(f"| {row.item} | {figure} | {value} | {row.target} | {met} |")
    return "\n".join(lines) + "\n"


# -- the world ------------------------------------------------------------------


class BenchWorld:
    """The lab (DNS on 127.x:53, CA, nginx) and one Synapse with the module
    and the probe module behind nginx, serving `SERVER_NAME` on `n` addresses."""

    def __init__(
        self, directory: Path, synapse_config: dict[str, Any] | None = None
    ) -> None:
        self.lab = Lab(directory / "lab")
        self.cert = self.lab.cert(SERVER_NAME)
        port = free_port()
        module_config = self.lab.module_config(
            startup_check=False,
            interval=0,
            timeout=f"{RUN_TIMEOUT_S:g}s",
            cache_ttl="1h",  # item 4 serves one cached report throughout
            notary_check=False,  # no trusted key servers in the lab's world
        )
        extra = {
            "listeners": base_config(SERVER_NAME, port)["listeners"],
            "modules": [
                {"module": PROBE_MODULE, "config": {}},
                {"module": MODULE, "config": module_config},
            ],
            **(synapse_config or {}),
        }
        # The peer's wrapper gives Synapse's own resolver (the agent of item
        # 1) the lab's DNS; the module uses `dns_servers` either way.
        self.synapse = PeerSynapse(
            directory / "synapse",
            dns_ip=self.lab.dns.host,
            ca_file=self.lab.ca_file,
            server_name=SERVER_NAME,
            port=port,
            extra_config=extra,
        )
        self.upstream = f"http://127.0.0.1:{port}"
        self.token = ""
        self.addresses = 0

    @property
    def base_url(self) -> str:
        return self.synapse.base_url

    @property
    def pid(self) -> int:
        process = self.synapse.process.process
        assert process is not None
        return process.pid

    def start(self) -> BenchWorld:
        self.serve(1)
        self.synapse.start()
        self.token = register_user(
            self.base_url, SHARED_SECRET, "bench-admin", "bench-password", True
        )
        return self

    def restart(self) -> None:
        self.synapse.stop()
        self.synapse.start()

    def close(self) -> None:
        try:
            self.synapse.stop()
        finally:
            self.lab.close()

    def serve(self, n: int) -> None:
        """`SERVER_NAME` has `n` A records, each an nginx vhost in front of
        our Synapse (the healthy setup, n times)."""
        ips = [self.lab.ip(f"target-{i}") for i in range(n)]
        client = WellKnown(
            {"m.homeserver": {"base_url": f"https://{SERVER_NAME}/"}},
            headers={"Access-Control-Allow-Origin": "*"},
        )
        self.lab.with_zone({SERVER_NAME: {"A": ips}})
        self.lab.with_nginx(
            *(
                Vhost(
                    address=ip,
                    server_names=(SERVER_NAME,),
                    cert=self.cert,
                    well_known_server=well_known_server(f"{SERVER_NAME}:443"),
                    well_known_client=client,
                    upstream=self.upstream,
                )
                for ip in ips
            )
        )
        self.addresses = n

    def filter_everything(self) -> None:
        """`SERVER_NAME`'s only address drops TCP 443 and 8448 (nftables in
        the lab's namespace)."""
        ip = self.lab.filtered(443, 8448)
        self.lab.with_zone({SERVER_NAME: {"A": [ip]}})
        self.addresses = 0

    # -- asking it --------------------------------------------------------------

    def run(self) -> tuple[dict[str, Any], float]:
        """One full run: the report and the endpoint's wall time (ms)."""
        began = time.perf_counter()
        response = http_request(
            f"{self.base_url}{ENDPOINT}?refresh=true",
            token=self.token,
            timeout=REQUEST_TIMEOUT_S,
        )
        wall_ms = (time.perf_counter() - began) * 1000
        if response.status != 200:
            raise RuntimeError(f"{ENDPOINT}: {response.status} {response.text[:500]}")
        report: dict[str, Any] = response.json()
        return report, wall_ms

    def agent_version_ms(self) -> float:
        response = http_request(
            f"{self.base_url}{AGENT_PATH}?server={SERVER_NAME}",
            timeout=REQUEST_TIMEOUT_S,
        )
        body = response.json() if response.status == 200 else {}
        if response.status != 200 or body.get("status") != 200:
            raise RuntimeError(f"{AGENT_PATH}: {response.status} {response.text[:500]}")
        return float(body["ms"])

    def recorded_run(self) -> tuple[dict[str, Any], Replay]:
        """One full run, and the requests it made as nginx saw them: what
        `replay` sends again."""
        before = len(self.lab.nginx.connection_log_text().splitlines())
        report, _ = self.run()
        lines = self.lab.nginx.connection_log_text().splitlines()[before:]
        return report, Replay.of_log(lines, str(self.lab.ca_file))

    def replay_ms(self, replay: Replay) -> float:
        """The recorded requests made again from inside Synapse, bare (see
        perf_probe_module): every connection at once, no DNS, no checks."""
        response = http_request(
            f"{self.base_url}{REPLAY_PATH}",
            method="POST",
            body=replay.body,
            timeout=REQUEST_TIMEOUT_S,
        )
        answer = response.json() if response.status == 200 else {}
        if response.status != 200 or answer.get("requests") != replay.requests:
            raise RuntimeError(
                f"{REPLAY_PATH}: {response.status} {response.text[:500]}"
            )
        return float(answer["ms"])

    def log_offset(self) -> int:
        return len(self.synapse.process.log_text())

    def ratelimited_since(self, offset: int) -> int:
        """How many requests Synapse's federation ratelimiter queued since
        `offset` of its log (its sleeps are logged at DEBUG only). The
        module's signed requests come from our own server name, so they share
        one origin's budget (`rc_federation`)."""
        text = self.synapse.process.log_text()[offset:]
        return len(RATELIMITED_RE.findall(text))

    def lag(self, action: str) -> dict[str, Any]:
        return self._probe_action(LAG_PATH, action)

    def heap(self, action: str) -> dict[str, Any]:
        return self._probe_action(HEAP_PATH, action)

    def _probe_action(self, path: str, action: str) -> dict[str, Any]:
        response = http_request(
            f"{self.base_url}{path}?action={action}", timeout=REQUEST_TIMEOUT_S
        )
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {response.text[:300]}")
        answer: dict[str, Any] = response.json()
        return answer


def _replayed_headers(entry: dict[str, Any]) -> dict[str, str]:
    sent = {"Authorization": entry["authorization"], "Origin": entry["origin"]}
    return {name: value for name, value in sent.items() if value}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Replay:
    """The HTTP requests of one run, grouped by the connection that carried
    them, in the order each connection carried them (nginx's `$connection`
    and `$connection_requests`), with the headers that change what Synapse
    does: the X-Matrix signature (its check is part of the cost) and the
    client's Origin."""

    # nginx numbers its own connections to the upstream from the same
    # counter as the clients', so gaps between the numbers are not
    # connections of the run: only those that carried a request count.
    body: dict[str, Any]
    requests: int

    @classmethod
    def of_log(cls, lines: Sequence[str], ca_file: str) -> Replay:
        by_connection: dict[int, list[dict[str, Any]]] = {}
        for line in lines:
            entry = json.loads(line)
            if entry["uri"].startswith(NETLAB_CONTROL):
                continue
            by_connection.setdefault(int(entry["connection"]), []).append(entry)
        connections = []
        for entries in by_connection.values():
            entries.sort(key=lambda e: int(e["request"]))
            first = entries[0]
            connections.append({
                "address": first["address"], "port": int(first["port"]),
                "sni": first["sni"],
                "requests": [
                    {"method": e["method"], "uri": e["uri"], "host": e["host"],
                     "headers": _replayed_headers(e)}
                    for e in entries
                ],
            })  # fmt: skip
        return cls(
            body={"ca_file": ca_file, "connections": connections},
            requests=sum(len(c["requests"]) for c in connections),
        )

    @property
    def connections(self) -> int:
        return len(self.body["connections"])

    def describe(self) -> str:
        return f"{self.requests} requests over {self.connections} connections"


def _targets(report: dict[str, Any]) -> int:
    """How many addresses the run probed (distinct `target`s of its checks)."""
    return len({c["target"] for c in report.get("checks", []) if c.get("target")})


def _verdict(report: dict[str, Any]) -> str:
    return str(report.get("verdict"))


def _runs(
    world: BenchWorld, n: int, gap_s: float = 0.0
) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    durations, walls, reports = [], [], []
    for _ in range(n):
        time.sleep(gap_s)
        report, wall = world.run()
        durations.append(float(report["duration_ms"]))
        walls.append(wall)
        reports.append(report)
    return durations, walls, reports


# -- the items ------------------------------------------------------------------


def item_1_run_vs_agent(
    world: BenchWorld, reps: Reps, profile_dir: Path | None
) -> list[Row]:
    world.serve(1)
    world.run()  # warm-up: code paths loaded once, not caches (each run is fresh)
    world.agent_version_ms()
    runs: list[float] = []
    walls: list[float] = []
    agent: list[float] = []
    for _ in range(reps.runs):
        time.sleep(RUN_GAP_S)
        report, wall = world.run()
        runs.append(float(report["duration_ms"]))
        walls.append(wall)
        agent.append(world.agent_version_ms())
    verdict = _verdict(report)
    _, replay = world.recorded_run()
    replays = _replays(world, replay, reps.runs, RUN_GAP_S)
    profiled = (
        profile_runs(world, profile_dir, reps.runs * 4, 1, RUN_GAP_S)
        if profile_dir is not None
        else []
    )
    return profiled + [
        Row(1, "full run, 1 target: duration_ms (median)", median(runs), "ms",
            note=f"verdict {verdict}, {len(report.get('checks', []))} checks"),
        Row(1, "full run, 1 target: endpoint wall time (median)", median(walls), "ms"),
        Row(1, "MatrixFederationAgent, cold, one /version (median)", median(agent), "ms"),
        Row(1, "full run / agent /version", ratio(median(runs), median(agent)), "x", "<=", 1.5),
        Row(1, "the run's own requests replayed bare (median)", median(replays), "ms",
            note=f"{replay.describe()}; every connection at once, no DNS, no checks"),
        Row(1, "requests replayed bare / agent /version", ratio(median(replays), median(agent)), "x"),
        Row(1, "full run / its requests replayed bare", ratio(median(runs), median(replays)), "x"),
    ]  # fmt: skip


def _replays(world: BenchWorld, replay: Replay, n: int, gap_s: float) -> list[float]:
    world.replay_ms(replay)  # warm-up
    timings = []
    for _ in range(n):
        time.sleep(gap_s)
        timings.append(world.replay_ms(replay))
    return timings


def item_2_scaling(
    world: BenchWorld, reps: Reps, profile_dir: Path | None
) -> list[Row]:
    rows: list[Row] = []
    by_scale: dict[int, float] = {}
    replayed: dict[int, float] = {}
    for n in SCALES:
        world.serve(n)
        world.run()  # warm-up
        offset = world.log_offset()
        durations, walls, reports = _runs(world, reps.runs, RUN_GAP_S)
        by_scale[n] = median(durations)
        probed = _targets(reports[-1])
        limited = world.ratelimited_since(offset) / max(1, reps.runs)
        time.sleep(RUN_GAP_S)
        _, replay = world.recorded_run()
        replayed[n] = median(_replays(world, replay, reps.runs, RUN_GAP_S))
        rows.append(
            Row(2, f"full run, {n} A records: duration_ms (median)", by_scale[n], "ms",
                note=f"wall {median(walls):.0f} ms, {probed} targets probed, "
                f"verdict {_verdict(reports[-1])}, Synapse's federation "
                f"ratelimiter queued {limited:.1f} requests per run")
        )  # fmt: skip
        rows.append(
            Row(2, f"its requests replayed bare, {n} A records (median)", replayed[n], "ms",
                note=replay.describe())
        )  # fmt: skip
        if n == SCALES[-1] and profile_dir is not None:
            rows += profile_runs(world, profile_dir, reps.runs * 2, 2)
    rows.append(
        Row(2, f"{SCALES[-1]} / {SCALES[0]} A records", ratio(by_scale[SCALES[-1]], by_scale[SCALES[0]]), "x", "<=", 1.5)
    )  # fmt: skip
    rows.append(
        Row(2, f"{SCALES[-1]} / {SCALES[0]} A records, the requests replayed bare", ratio(replayed[SCALES[-1]], replayed[SCALES[0]]), "x")
    )  # fmt: skip
    return rows


def item_3_reactor(world: BenchWorld, reps: Reps) -> list[Row]:
    world.serve(SCALES[-1])
    world.run()  # warm-up
    world.lag("start")
    time.sleep(2.0)
    idle = world.lag("read")
    latencies: list[float] = []
    with _health_poller(f"{world.base_url}/health", latencies):
        world.lag("start")
        durations, _, _ = _runs(world, reps.reactor_runs)
        busy = world.lag("stop")
    # The same requests without the module: what serving and making them
    # does to the reactor by itself.
    time.sleep(RUN_GAP_S)
    _, replay = world.recorded_run()
    world.replay_ms(replay)  # warm-up
    world.lag("start")
    for _ in range(reps.reactor_runs):
        world.replay_ms(replay)
    bare = world.lag("stop")
    return [
        Row(3, "reactor lag, idle: p99", float(idle["p99_ms"]), "ms",
            note=f"max {idle['max_ms']} ms, {idle['count']} ticks"),
        Row(3, f"reactor lag during {reps.reactor_runs} runs ({SCALES[-1]} targets): p50", float(busy["p50_ms"]), "ms",
            note=f"{busy['count']} ticks, runs {median(durations):.0f} ms median"),
        Row(3, "reactor lag during runs: p99", float(busy["p99_ms"]), "ms", "<=", 5),
        Row(3, "reactor lag during runs: max", float(busy["max_ms"]), "ms", "<=", 20),
        Row(3, "ticks later than 5 ms that waited on a garbage-collector pass", float(busy.get("late_ticks_waiting_on_gc") or 0), "ticks",
            note=f"of {busy.get('late_ticks')} late ticks; Synapse's collector ran {busy.get('gc_passes')} passes, "
            f"{busy.get('gc_total_ms')} ms in all, the longest {busy.get('gc_max_ms')} ms"),
        Row(3, "reactor lag during bare replays of a run's requests: p99", float(bare["p99_ms"]), "ms",
            note=f"{reps.reactor_runs} replays back to back of {replay.describe()}; "
            f"max {bare['max_ms']} ms, {bare['late_ticks']} ticks later than 5 ms"),
        Row(3, "/health latency during runs: p50", median(latencies), "ms",
            note=f"{len(latencies)} polls"),
        Row(3, "/health latency during runs: p99", percentile(latencies, 0.99), "ms"),
    ]  # fmt: skip


@contextmanager
def _health_poller(url: str, latencies: list[float]) -> Iterator[None]:
    """Polls `url` every HEALTH_POLL_S on one keep-alive connection until the
    block ends (at most 5 minutes), appending latencies in ms."""
    stop = threading.Event()
    parsed = urllib.parse.urlsplit(url)

    def poll() -> None:
        deadline = time.monotonic() + 300
        conn = http.client.HTTPConnection(parsed.netloc, timeout=10)
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                began = time.perf_counter()
                try:
                    conn.request("GET", parsed.path)
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException):
                    conn.close()
                    ok = False
                latencies.append(
                    (time.perf_counter() - began) * 1000 if ok else math.inf
                )
                stop.wait(HEALTH_POLL_S)
        finally:
            conn.close()

    thread = threading.Thread(target=poll, name="health-poller", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)


def item_4_serving(
    world: BenchWorld, reps: Reps, profile_dir: Path | None
) -> list[Row]:
    world.serve(SCALES[-1])  # the largest report
    report, _ = world.run()  # the report item 4 serves from the cache
    size = len(json.dumps(report))
    report_url = f"{world.base_url}{ENDPOINT}"
    health_url = f"{world.base_url}/health"
    auth = {"Authorization": f"Bearer {world.token}"}
    tool = "wrk" if shutil.which("wrk") else "python"
    cached = load(report_url, auth, reps.load_s)
    health = load(health_url, {}, reps.load_s)
    # The cheapest authenticated request Synapse serves (same token, a body
    # of a few bytes): what Synapse's own request path and auth cost.
    whoami = load(f"{world.base_url}{WHOAMI_PATH}", auth, reps.load_s)
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        (profile_dir / "served-report.json").write_text(
            json.dumps(report, indent=1), encoding="utf-8"
        )
        profile_during(
            world,
            profile_dir,
            "synapse-serving",
            f"{reps.load_s:g} s of load on the cached report",
            lambda: load(report_url, auth, reps.load_s),
        )
    return [
        Row(4, "cached GET /_synapse/fedhealth: requests/s", cached.rps, "req/s",
            note=f"{tool}, {LOAD_CONNECTIONS} connections, {reps.load_s:g} s, report {size // 1024} KiB of {SCALES[-1]} targets"),
        Row(4, "cached GET /_synapse/fedhealth: p99", cached.p99_ms, "ms"),
        Row(4, "GET /health (same listener): requests/s", health.rps, "req/s"),
        Row(4, "GET /health: p99", health.p99_ms, "ms"),
        Row(4, "cached report / health requests/s", ratio(cached.rps, health.rps), "x", ">=", 0.5),
        Row(4, f"GET {WHOAMI_PATH} (same token): requests/s", whoami.rps, "req/s",
            note=f"p99 {whoami.p99_ms:.2f} ms, {ratio(whoami.rps, health.rps):.2f}x of /health"),
        Row(4, "cached report / whoami requests/s", ratio(cached.rps, whoami.rps), "x"),
    ]  # fmt: skip


def item_5_memory(world: BenchWorld) -> list[Row]:
    """Memory after 1 and after 10 runs, in a Synapse started afresh; the
    same for bare replays of one run's requests (what Synapse's serving of
    them alone adds); and what the Python heap still holds, by owner, after
    `HEAP_RUNS` more runs once every bounded cache has turned over."""
    world.serve(1)
    _, replay = world.recorded_run()
    world.restart()
    replayed = _rss_over(world, lambda: world.replay_ms(replay))
    world.restart()
    ran = _rss_over(world, world.run)
    heap = _heap_held_over_runs(world)
    held = heap["held_bytes_by_owner"]
    return [
        Row(5, "RSS of the benchmark Synapse before any run", ran.idle / MB, "MB"),
        Row(5, "RSS after 1 run", ran.after_1 / MB, "MB"),
        Row(5, "RSS after 10 runs", ran.after_10 / MB, "MB"),
        Row(5, "RSS growth from run 1 to run 10", ran.growth_mb, "MB", "<=", 2,
            note="allocator noise allowed: 2 MB"),
        Row(5, "RSS growth from replay 1 to replay 10 (the run's requests, bare)",
            replayed.growth_mb, "MB",
            note="no module code runs: Synapse serving the requests, its caches and the allocator"),
        Row(5, f"Python heap the module's code still holds after {HEAP_RUNS} more runs",
            held.get("module", 0) / 1024, "KiB", "<=", HEAP_MODULE_LIMIT_KIB,
            note=f"tracemalloc, after {HEAP_RUNS} traced runs turned every cache over"),
        Row(5, f"Python heap Synapse's code still holds after {HEAP_RUNS} more runs",
            held.get("synapse", 0) / 1024, "KiB",
            note="its caches (LruCache entries), filling up to their size"),
        Row(5, f"Python heap held after {HEAP_RUNS} more runs, all code",
            heap["held_bytes"] / 1024, "KiB"),
    ]  # fmt: skip


class RssOver(NamedTuple):
    idle: int
    after_1: int
    after_10: int

    @property
    def growth_mb(self) -> float:
        """From step 1 to step 10."""
        return (self.after_10 - self.after_1) / MB


def _rss_over(world: BenchWorld, step: Callable[[], object]) -> RssOver:
    """RSS before any step, after 1 and after 10."""
    idle = startup_time.rss_bytes(world.pid)
    step()
    after_1 = startup_time.rss_bytes(world.pid)
    for _ in range(9):
        step()
    return RssOver(idle, after_1, startup_time.rss_bytes(world.pid))


def _heap_held_over_runs(world: BenchWorld) -> dict[str, Any]:
    """Traced heap held after `HEAP_RUNS` runs, measured from a baseline
    taken after `HEAP_RUNS` traced runs: a bounded cache that replaces
    entries allocated before tracing would otherwise look like growth."""

    world.heap("start")
    try:
        for _ in range(HEAP_RUNS):
            world.run()
        world.heap("start")
        for _ in range(HEAP_RUNS):
            world.run()
        return world.heap("read")
    finally:
        world.heap("stop")


def item_5_startup(reps: Reps) -> list[Row]:
    samples = startup_time.measure(reps.starts)
    plain, module = startup_time.VARIANTS
    plain_s, module_s = median(samples.seconds[plain]), median(samples.seconds[module])
    plain_mb = median(samples.rss_bytes[plain]) / MB
    module_mb = median(samples.rss_bytes[module]) / MB
    return [
        Row(5, "start-up to /health without the module (median)", plain_s * 1000, "ms",
            note=f"{reps.starts} starts"),
        Row(5, "start-up to /health with the module (median)", module_s * 1000, "ms"),
        Row(5, "start-up added by the module", (ratio(module_s, plain_s) - 1) * 100, "%", "<=", 5),
        Row(5, "RSS at /health without / with the module", plain_mb, "MB",
            note=f"with the module {module_mb:.1f} MB"),
        Row(5, "RSS added by the module", module_mb - plain_mb, "MB", "<=", 10),
    ]  # fmt: skip


def item_6_filtered(world: BenchWorld, reps: Reps) -> list[Row]:
    world.filter_everything()
    try:
        durations, walls, reports = _runs(world, reps.filtered_runs)
    finally:
        world.serve(1)
    timeout_ms = RUN_TIMEOUT_S * 1000
    worst = max(durations)
    return [
        Row(6, f"filtered port: duration_ms (max of {len(durations)})", worst, "ms",
            note=f"timeout {timeout_ms:.0f} ms, wall {max(walls):.0f} ms, verdict {_verdict(reports[-1])}"),
        Row(6, "filtered port: over the timeout", (worst / timeout_ms - 1) * 100, "%", "<=", 5),
    ]  # fmt: skip


# -- load generator ---------------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Load:
    rps: float
    p99_ms: float
    requests: int
    errors: int


def load(url: str, headers: dict[str, str], seconds: float) -> Load:
    """Bounded keep-alive load on one loopback URL: wrk when installed, else
    Python threads."""
    if shutil.which("wrk"):
        return _wrk(url, headers, seconds)
    return _python_load(url, headers, seconds)


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output: str) -> Load:
    """What `wrk --latency` printed."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\b", output, re.MULTILINE)
    total = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:.*", output)
    bad = int(errors[1]) if errors else 0
    if socket_errors:
        bad += sum(int(n) for n in re.findall(r"\d+", socket_errors[0]))
    return Load(
        float(rps[1]) if rps else math.nan,
        float(p99[1]) * _WRK_UNITS[p99[2]] if p99 else math.nan,
        int(total[1]) if total else 0,
        bad,
    )


def _wrk(url: str, headers: dict[str, str], seconds: float) -> Load:
    command = ["wrk", "-t1", f"-c{LOAD_CONNECTIONS}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*command, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    result = parse_wrk(done.stdout)
    if done.returncode != 0 or result.errors:
        print(
            f"wrk {url}: exit {done.returncode}, {result.errors} errors",
            file=sys.stderr,
        )
    return result


def _python_load(url: str, headers: dict[str, str], seconds: float) -> Load:
    parsed = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection(parsed.netloc, timeout=10)
        mine: list[float] = []
        bad = 0
        try:
            while time.monotonic() < deadline and len(mine) < 1_000_000:
                began = time.perf_counter()
                try:
                    conn.request("GET", parsed.path, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        bad += 1
                except (OSError, http.client.HTTPException):
                    conn.close()
                    bad += 1
                    continue
                mine.append((time.perf_counter() - began) * 1000)
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                errors[0] += bad

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(LOAD_CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    elapsed = time.monotonic() - began
    return Load(
        len(latencies) / elapsed, percentile(latencies, 0.99), len(latencies), errors[0]
    )


# -- profiling --------------------------------------------------------------------


def profile_runs(
    world: BenchWorld, directory: Path, runs: int, item: int, gap_s: float = 0.0
) -> list[Row]:
    """py-spy of our Synapse during `runs` full runs: how much of each run
    Synapse spent running Python (holding the GIL), next to how long a run
    took."""
    durations: list[float] = []

    def action() -> None:
        durations.extend(_runs(world, runs, gap_s)[0])

    profiled = profile_during(
        world,
        directory,
        f"synapse-{world.addresses}-targets",
        f"{runs} full runs with {world.addresses} A records",
        action,
    )
    if profiled is None or not durations:
        return []
    summary, _, out = profiled
    per_run_ms = summary.cpu_s / runs * 1000
    return [
        Row(item, f"Synapse holding the GIL per run (py-spy, {runs} runs, {world.addresses} targets)",
            per_run_ms, "ms",
            note=f"runs took {median(durations):.0f} ms (median); profile in {out}"),
    ]  # fmt: skip


def profile_during(
    world: BenchWorld,
    directory: Path,
    name: str,
    what: str,
    action: Callable[[], object],
) -> tuple[ProfileSummary, float, Path] | None:
    """py-spy (speedscope format) of our Synapse while `action` runs, into
    DIR/NAME.speedscope.json, with a summary of the frames with the most own
    time in DIR/NAME.txt. Returns (the summary, the wall time in seconds,
    the profile's path), or None without py-spy. Only samples of a thread
    holding the GIL count: a thread waiting in epoll, a socket or a lock is
    not busy."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not on PATH: no profile", file=sys.stderr)
        return None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}.speedscope.json"
    log_path = directory / f"{name}.py-spy.log"
    log = open(log_path, "wb")  # closed below
    recorder = subprocess.Popen(
        [py_spy, "record", "--pid", str(world.pid), "--rate", "500", "--nonblocking", "--gil",
         "--format", "speedscope", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # py-spy attaches
        began = time.perf_counter()
        action()
        wall_s = time.perf_counter() - began
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait(10)
        log.close()
    if not out.exists():
        err = log_path.read_text(errors="replace")
        print(f"py-spy wrote no profile: {err[-500:]}", file=sys.stderr)
        return None
    summary = summarise_speedscope(json.loads(out.read_text(encoding="utf-8")))
    text = (
        f"py-spy of the benchmark Synapse during {what}: {wall_s:.1f} s of wall "
        f"time, in which py-spy saw {summary.cpu_s:.1f} s of samples holding the "
        f"GIL (Python running; waits left out; {summary.samples} samples). Generated "
        f"{_now()} by benchmarks/performance.py --profile.\n"
        f"Profile: {out}\n\n" + summary.text()
    )
    (directory / f"{name}.txt").write_text(text, encoding="utf-8")
    print(text)
    return summary, wall_s, out


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProfileSummary:
    samples: int
    cpu_s: float  # py-spy's weights are seconds of samples (idle left out)
    own: list[tuple[str, float]]  # frame, share of samples (0..1), most first
    total: list[tuple[str, float]]
    # share of samples per `cost_of` kind, most first
    kinds: list[tuple[str, float]] = attr.Factory(list)

    def text(self, top: int = 10) -> str:
        lines = ["What the samples were doing (share of samples):"]
        lines += [f"  {share * 100:5.1f} %  {kind}" for kind, share in self.kinds]
        lines += ["", f"Top {top} frames by own time (share of CPU samples):"]
        lines += [f"  {share * 100:5.1f} %  {frame}" for frame, share in self.own[:top]]
        ours = [(f, v) for f, v in self.total if "synapse_fedhealth/" in f]
        lines += [
            "",
            f"Top {top * 2} frames of synapse_fedhealth by total time (inclusive):",
        ]
        lines += [
            f"  {share * 100:5.1f} %  {frame}" for frame, share in ours[: top * 2]
        ]
        lines += ["", f"Top {top * 2} frames by total time (inclusive):"]
        lines += [
            f"  {share * 100:5.1f} %  {frame}" for frame, share in self.total[: top * 2]
        ]
        return "\n".join(lines) + "\n"


def summarise_speedscope(data: dict[str, Any]) -> ProfileSummary:
    """Own and inclusive time per frame over every thread of a py-spy
    speedscope file."""
    frames = data["shared"]["frames"]
    names = [
        f"{f.get('name')} ({_short_path(f.get('file', '?'))}:{f.get('line', '?')})"
        for f in frames
    ]
    own: dict[str, float] = {}
    total: dict[str, float] = {}
    kinds: dict[str, float] = {}
    samples = 0
    weight_sum = 0.0
    for profile in data.get("profiles", []):
        weights = profile.get("weights") or [1] * len(profile.get("samples", []))
        for stack, weight in zip(profile.get("samples", []), weights, strict=False):
            if not stack:
                continue
            samples += 1
            weight_sum += weight
            leaf = names[stack[-1]]
            own[leaf] = own.get(leaf, 0.0) + weight
            for name in {names[i] for i in stack}:
                total[name] = total.get(name, 0.0) + weight
            kind = cost_of([names[i] for i in stack])
            kinds[kind] = kinds.get(kind, 0.0) + weight
    if not samples or weight_sum <= 0:
        return ProfileSummary(0, 0.0, [], [])

    def ranked(table: dict[str, float]) -> list[tuple[str, float]]:
        return sorted(
            ((k, v / weight_sum) for k, v in table.items()), key=lambda kv: -kv[1]
        )

    return ProfileSummary(
        samples, weight_sum, ranked(own), ranked(total), ranked(kinds)
    )


# What a frame's file says a sample was doing, checked from the innermost
# frame out: the first that matches decides (a response decrypted by TLS and
# handed up to a check is the check's time).
_COST_BY_FRAME = (
    ("synapse/metrics/_gc.py", "Synapse's garbage collector"),
    ("synapse_fedhealth/", "the module (checks, probes, report)"),
    ("_newclient.py", "the module's HTTP client (Twisted)"),
    ("OpenSSL/", "TLS of the module's connections (handshakes, records)"),
    ("protocols/tls.py", "TLS of the module's connections (handshakes, records)"),
    ("synapse/http/", "Synapse serving a request (the run's own, or the load)"),
    ("synapse/federation/", "Synapse serving a request (the run's own, or the load)"),
    ("synapse/rest/", "Synapse serving a request (the run's own, or the load)"),
    ("synapse/api/", "Synapse serving a request (the run's own, or the load)"),
    ("synapse/crypto/", "Synapse serving a request (the run's own, or the load)"),
    ("synapse/handlers/", "Synapse serving a request (the run's own, or the load)"),
    ("twisted/web/http.py", "Synapse serving a request (the run's own, or the load)"),
    ("twisted/web/server.py", "Synapse serving a request (the run's own, or the load)"),
)
# Frames that run on behalf of whatever called them (Deferreds, logcontexts,
# caches, metrics): a sample there belongs to the next frame out.
_PASS_THROUGH = (
    "twisted/internet/defer.py",
    "twisted/python/",
    "synapse/logging/",
    "synapse/util/",
    "synapse/metrics/_reactor_metrics.py",
    "prometheus_client/",
    "contextlib",
)


def cost_of(stack: Sequence[str]) -> str:
    """What one sample of the benchmark Synapse was doing, outermost frame
    first: every address is this Synapse, so a run's time is partly the
    serving side of its own requests."""
    text = " | ".join(stack)
    if "perf_probe_module" in text:
        return "the benchmark's own probe module"
    if "Thread._bootstrap" in text:
        if "net/dns.py" in text or "dns/" in text:
            return "DNS lookup threads"
        if "synapse/storage" in text:
            return "database threads"
        return "other threads"
    for frame in reversed(stack):
        if any(marker in frame for marker in _PASS_THROUGH):
            continue
        for marker, kind in _COST_BY_FRAME:
            if marker in frame:
                return kind
    return "the reactor loop (polling, timers, socket writes)"


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/synapse_fedhealth/", "/lib/python3"):
        if marker in path:
            return (
                path.split(marker, 1)[1]
                if marker != "/synapse_fedhealth/"
                else "synapse_fedhealth/" + path.split(marker, 1)[1]
            )
    return path


# -- the whole ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        synapse = version("matrix-synapse")
    except Exception:  # the version is only shown
        synapse = "?"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "synapse": synapse,
        "commit": commit or "?",
        "date": _now(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run(
    items: Sequence[int],
    reps: Reps,
    profile_dir: Path | None,
    synapse_config: dict[str, Any] | None = None,
) -> list[Row]:
    rows: list[Row] = []
    world_items = [i for i in items if i != 5] + ([5] if 5 in items else [])
    with tempfile.TemporaryDirectory(prefix="fedhealth-perf-") as tmp:
        world = BenchWorld(Path(tmp), synapse_config)
        try:
            world.start()
            steps: dict[int, Callable[[], list[Row]]] = {
                5: lambda: item_5_memory(world),
                1: lambda: item_1_run_vs_agent(world, reps, profile_dir),
                2: lambda: item_2_scaling(world, reps, profile_dir),
                3: lambda: item_3_reactor(world, reps),
                4: lambda: item_4_serving(world, reps, profile_dir),
                6: lambda: item_6_filtered(world, reps),
            }
            # Memory first, on a Synapse that has done nothing else yet.
            for item in sorted(world_items, key=lambda i: (i != 5, i)):
                began = time.monotonic()
                try:
                    found = steps[item]()
                except Exception as e:  # the other items still run
                    traceback.print_exc()
                    found = [
                        Row(item, f"item {item} failed: {e!r}"[:200], math.nan, "")
                    ]
                rows += found
                print(f"item {item}: {time.monotonic() - began:.0f} s", file=sys.stderr)
                print(render_markdown(found), file=sys.stderr)
        finally:
            world.close()
    if 5 in items:  # its own Synapses, once the world's are gone
        rows += item_5_startup(reps)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated items, e.g. 2,4 (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record of Synapse during items 1, 2 (16 targets) and 4 into DIR",
    )
    parser.add_argument(
        "--synapse-config",
        type=json.loads,
        metavar="JSON",
        help="merged into the Synapse config, e.g. "
        '\'{"rc_federation": {"concurrent": 100}}\'',
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="where to write the results"
    )
    parser.add_argument(
        "--markdown-only",
        type=Path,
        metavar="JSON",
        help="print the table of saved results, run nothing",
    )
    args = parser.parse_args(argv)  # fmt: skip

    if args.markdown_only is not None:
        saved = json.loads(args.markdown_only.read_text(encoding="utf-8"))
        print(_header(saved["machine"], saved.get("options", "")))
        print(render_markdown([Row.from_json(r) for r in saved["rows"]]))
        return 0
    items = ITEMS if not args.only else tuple(int(i) for i in args.only.split(","))
    unknown = set(items) - set(ITEMS)
    if unknown:
        parser.error(f"unknown items {sorted(unknown)}; items are {ITEMS}")
    if os.geteuid() != 0:
        parser.error("the lab needs root (DNS on port 53, nginx on :443, nftables)")
    reps = Reps.of(args.quick)
    began = time.monotonic()
    info = machine()
    rows = run(items, reps, args.profile, args.synapse_config)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    options = " ".join(
        part
        for part in (f"--only {args.only}" if args.only else "", "--quick" if args.quick else "",
                     f"--synapse-config '{json.dumps(args.synapse_config)}'" if args.synapse_config else "")
        if part
    )  # fmt: skip
    info["wall_s"] = round(time.monotonic() - began)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"machine": info, "options": options, "reps": attr.asdict(reps),
             "rows": [r.to_json() for r in rows]},
            indent=2,
        ) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    print(_header(info, options))
    print(render_markdown(rows))
    print(f"wrote {args.json}")
    return 0 if all(r.met is not False for r in rows) else 1


def _header(info: dict[str, Any], options: str) -> str:
    return (
        f"{info['date']}, commit {info['commit']}: {info['nproc']} × {info['cpu']}, "
        f"Python {info['python']}, Synapse {info['synapse']}"
        + (f", `{options}`" if options else "")
        + (f", {info['wall_s']} s" if "wall_s" in info else "")
        + (
            f", load average {info['loadavg_at_start'][0]:g} at the start"
            if "loadavg_at_start" in info
            else ""
        )
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
