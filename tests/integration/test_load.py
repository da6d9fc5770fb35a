"""200 concurrent admin requests against a real Synapse whose run is slow
(SPEC 2.2: concurrent requests share one run in flight; SPEC 5: the reactor
is never blocked).

The module's only DNS server is a loopback stub that answers every name
about our server_name after a delay, so a run takes that long. Runs are
counted by the stub's query log: every run asks for the
`_matrix-fed._tcp` SRV record exactly once.

Figures are printed; with FEDHEALTH_LOAD_RESULTS=1 (or a file name) they are
also written to benchmarks/results/load.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attr
import pytest

from tests.integration.conftest import (
    SERVER_NAME,
    SHARED_SECRET,
    client_listener,
    homeserver_config,
    module_config,
)
from tests.integration.netlab.dns_server import DnsServer
from tests.support.synapse_process import (
    SUMMARY_RE,
    SynapseProcess,
    free_port,
    http_request,
    register_user,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "load.md"
REQUESTS = 200
DNS_DELAY_S = 2.0
RUN_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 60.0
BURST_TIMEOUT_S = 90.0  # the whole burst, however slow the machine
HEALTH_INTERVAL_S = 0.05
HEALTH_TIMEOUT_S = 5.0
HEALTH_MAX_S = 1.0
SRV_NAME = f"_matrix-fed._tcp.{SERVER_NAME}"
# Every name a run asks about: each answers NXDOMAIN after the delay.
SLOW_NAMES = (
    SERVER_NAME,
    SRV_NAME,
    f"_matrix._tcp.{SERVER_NAME}",
    f"matrix.{SERVER_NAME}",
)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class SlowSynapse:
    process: SynapseProcess
    dns: DnsServer
    health_url: str  # /health on a listener of its own, away from the burst
    admin_token: str


@pytest.fixture(scope="module")
def slow_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowSynapse]:
    directory = tmp_path_factory.mktemp("load")
    zone = {
        name: {"behaviour": "nxdomain", "delay": DNS_DELAY_S} for name in SLOW_NAMES
    }
    with DnsServer(zone=zone) as dns:
        client_port, health_port = free_port(), free_port()
        config = homeserver_config(
            [client_listener(client_port), client_listener(health_port, ("client",))],
            module_config(
                dns,  # type: ignore[arg-type]  # only .address is used
                startup_delay=0,
                timeout=f"{RUN_TIMEOUT_S}s",
                notary_check=False,
            ),
        )
        with SynapseProcess(directory, config) as process:
            token = register_user(
                process.base_url, SHARED_SECRET, "admin", "admin-password", True
            )
            # The start-up run must be over: the burst starts from a cached report.
            process.wait_for_log(SUMMARY_RE, DNS_DELAY_S + RUN_TIMEOUT_S + 30)
            yield SlowSynapse(
                process, dns, f"http://127.0.0.1:{health_port}/health", token
            )


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Answer:
    refresh: bool
    status: int
    generated_at: int | None
    duration_ms: int | None
    elapsed_s: float


def _ask(synapse: SlowSynapse, refresh: bool, start: threading.Event) -> Answer:
    query = "?refresh=true" if refresh else ""
    start.wait(REQUEST_TIMEOUT_S)
    began = time.monotonic()
    response = http_request(
        f"{synapse.process.base_url}/_synapse/fedhealth{query}",
        token=synapse.admin_token,
        timeout=REQUEST_TIMEOUT_S,
    )
    generated_at = duration_ms = None
    if response.status == 200:
        report = response.json()
        generated_at, duration_ms = int(report["generated_at"]), report["duration_ms"]
    return Answer(
        refresh, response.status, generated_at, duration_ms, time.monotonic() - began
    )


def _poll_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    deadline = time.monotonic() + BURST_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        began = time.monotonic()
        try:
            response = http_request(url, timeout=HEALTH_TIMEOUT_S)
            ok = response.status == 200
        except OSError:
            ok = False
        latencies.append(time.monotonic() - began if ok else float("inf"))
        stop.wait(HEALTH_INTERVAL_S)


def _srv_queries(dns: DnsServer) -> int:
    return len(dns.queries_for(SRV_NAME, "SRV"))


def test_the_startup_run_asked_once(slow_synapse: SlowSynapse) -> None:
    # The run counter below relies on one SRV query per run.
    assert _srv_queries(slow_synapse.dns) == 1, slow_synapse.dns.queries


def test_burst_of_admin_requests_shares_one_run(slow_synapse: SlowSynapse) -> None:
    before = http_request(
        f"{slow_synapse.process.base_url}/_synapse/fedhealth",
        token=slow_synapse.admin_token,
    ).json()["generated_at"]
    runs_before = _srv_queries(slow_synapse.dns)

    start, stop = threading.Event(), threading.Event()
    latencies: list[float] = []
    health = threading.Thread(
        target=_poll_health,
        args=(slow_synapse.health_url, stop, latencies),
        name="health-poller",
        daemon=True,
    )
    health.start()
    began = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            futures = [
                pool.submit(_ask, slow_synapse, i % 2 == 0, start)
                for i in range(REQUESTS)
            ]
            start.set()
            answers = [f.result(timeout=BURST_TIMEOUT_S) for f in futures]
    finally:
        stop.set()
        health.join(HEALTH_TIMEOUT_S + 1)
    burst_s = time.monotonic() - began
    runs = _srv_queries(slow_synapse.dns) - runs_before

    statuses = sorted({a.status for a in answers})
    refreshed = {a.generated_at for a in answers if a.refresh}
    all_reports = {a.generated_at for a in answers}
    figures: dict[str, Any] = {
        "requests": len(answers),
        "refresh_requests": sum(a.refresh for a in answers),
        "statuses": statuses,
        "runs": runs,
        "distinct_reports": len(all_reports),
        "distinct_refreshed_reports": len(refreshed),
        "old_report_served": sum(a.generated_at == before for a in answers),
        "run_ms": max((a.duration_ms or 0) for a in answers if a.refresh),
        "burst_s": burst_s,
        "request_p50_s": statistics.median(a.elapsed_s for a in answers),
        "request_max_s": max(a.elapsed_s for a in answers),
        "health_polls": len(latencies),
        "health_p50_s": statistics.median(latencies) if latencies else float("nan"),
        "health_max_s": max(latencies) if latencies else float("nan"),
    }
    print("load figures:", figures)
    _write_results(figures)

    assert statuses == [200], answers
    # One run for the whole burst: every refresh got the same new report.
    assert runs == 1, figures
    assert len(refreshed) == 1, figures
    assert before not in refreshed
    # A plain request gets the cached report, or joins the run in flight.
    assert all_reports <= refreshed | {before}, figures
    # The run took as long as the slow DNS, and the reactor stayed free.
    assert figures["request_max_s"] >= DNS_DELAY_S * 0.9, figures
    assert len(latencies) >= 10, figures
    assert figures["health_max_s"] < HEALTH_MAX_S, figures


def test_synapse_still_healthy_after_the_burst(slow_synapse: SlowSynapse) -> None:
    response = http_request(slow_synapse.health_url, timeout=HEALTH_TIMEOUT_S)
    assert response.status == 200
    assert slow_synapse.process.running


def _write_results(figures: dict[str, Any]) -> None:
    target = os.environ.get("FEDHEALTH_LOAD_RESULTS")
    if not target:
        return
    path = RESULTS if target == "1" else Path(target)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    lines = [
        "# Load: concurrent admin requests against one slow run",
        "",
        f"Generated {when} by `FEDHEALTH_LOAD_RESULTS=1 pytest "
        f"tests/integration/test_load.py` ({platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}).",
        "",
        f"Setup: a real Synapse (sqlite) with the module; its only DNS server is a "
        f"loopback stub that answers every name of `{SERVER_NAME}` NXDOMAIN after "
        f"{DNS_DELAY_S:g} s, so a run (a few lookups in a row) is slow. "
        f"{figures['requests']} "
        f"threads send `GET /_synapse/fedhealth` at once with an admin token, every "
        f"second one with `?refresh=true`. A poller asks `/health` every "
        f"{HEALTH_INTERVAL_S * 1000:.0f} ms on a second listener of the same "
        f"process (the same reactor, not the burst's listen backlog). Runs are "
        f"counted by the stub's `{SRV_NAME}` SRV queries (one per run).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests (refresh=true) | {figures['requests']} "
        f"({figures['refresh_requests']}) |",
        f"| HTTP statuses | {', '.join(map(str, figures['statuses']))} |",
        f"| runs started by the burst | {figures['runs']} |",
        f"| distinct reports served | {figures['distinct_reports']} "
        f"({figures['old_report_served']} answers were the cached report from "
        "before the burst) |",
        f"| distinct reports among refresh answers | "
        f"{figures['distinct_refreshed_reports']} |",
        f"| the run's `duration_ms` | {figures['run_ms']} ms |",
        f"| burst wall time | {figures['burst_s']:.2f} s |",
        f"| request latency p50 / max | {ms(figures['request_p50_s'])} / "
        f"{ms(figures['request_max_s'])} |",
        f"| `/health` polls during the burst | {figures['health_polls']} |",
        f"| `/health` latency p50 / max | {ms(figures['health_p50_s'])} / "
        f"{ms(figures['health_max_s'])} (test bound: < {HEALTH_MAX_S:g} s) |",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
