"""A Synapse module for benchmarks/performance.py only: it measures, from
inside the homeserver under test, what the benchmark compares the module
against. Loaded through `modules:` as
`tests.support.perf_probe_module.PerfProbeModule` (PYTHONPATH = the repo
root); never part of the runtime package. No config.

- `GET /_synapse/perfbench/agent_version?server=NAME`: builds a fresh
  `MatrixFederationAgent` (its own connection pool, well-known cache, SRV
  cache and TLS policy, so nothing is warm) the way Synapse's federation
  client does, and times one `GET /_matrix/federation/v1/version` to NAME
  through it: `{"ms": ..., "status": ..., "body": {...}}`.
- `GET /_synapse/perfbench/lag?action=start|read|stop`: a 1 ms
  `LoopingCall` on Synapse's reactor; `start` (re)starts it with no samples,
  `read` and `stop` answer the lag of its ticks (how much later than 1 ms
  after the previous tick each one ran) as p50/p99/max ms and a count,
  and, to tell what held the reactor, the garbage collector's passes in
  that time (Synapse runs the collector itself, on the reactor) and how many
  of the ticks later than `LATE_TICK_MS` waited on one.

- `POST /_synapse/perfbench/replay`: makes the given HTTP requests, bare
  (no DNS, no checks, no judging), and times them: every connection at
  once, each connection's requests one after another over one TLS
  connection to its address, with its SNI, Host and headers. The body is
  `{"ca_file": PEM, "connections": [{"address", "port", "sni", "requests":
  [{"method", "uri", "host", "headers"}]}]}`; the answer
  `{"ms", "connections", "requests", "statuses"}`. The benchmark sends it
  the requests nginx logged for one run of the module: what those requests
  cost with nothing else around them.

- `GET /_synapse/perfbench/heap?action=start|read|stop`: what the Python
  heap holds that it did not hold at `start`. `start` collects garbage and
  begins tracing allocations (`tracemalloc`, 1 frame) with a snapshot and a
  count of live objects by type; `read` collects again and answers the
  traced bytes still held since `start`, grouped by the file that
  allocated them (the module's, Synapse's, the rest), the biggest sources,
  and the live-object counts and Prometheus label sets that grew. `stop` ends the tracing. Item 5
  uses it to tell memory the module keeps from allocator noise.

Unauthenticated: the benchmark's Synapse listens on 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import gc
import json
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

from synapse.http.server import DirectServeJsonResource
from synapse.http.servlet import parse_json_object_from_request
from synapse.logging.context import make_deferred_yieldable, run_in_background
from twisted.internet import defer, ssl, task
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.support.perf_stats import percentile

if TYPE_CHECKING:
    from synapse.http.site import SynapseRequest
    from synapse.module_api import ModuleApi
    from synapse.server import HomeServer

AGENT_PATH = "/_synapse/perfbench/agent_version"
LAG_PATH = "/_synapse/perfbench/lag"
LAG_INTERVAL_S = 0.001
# 10 minutes of 1 ms ticks at most: the benchmark reads within seconds.
LAG_SAMPLES_MAX = 600_000
REPLAY_PATH = "/_synapse/perfbench/replay"
AGENT_TIMEOUT_S = 30.0
# A tick this late is one the benchmark's p99 target (5 ms) counts against.
LATE_TICK_MS = 5.0


def _query_arg(request: SynapseRequest, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    return values[0].decode("utf-8") if values else None


class AgentVersionResource(DirectServeJsonResource):
    def __init__(self, hs: HomeServer) -> None:
        super().__init__(clock=hs.get_clock())
        self._hs = hs

    async def _async_render_GET(self, request: SynapseRequest) -> tuple[int, Any]:
        from synapse.crypto.context_factory import FederationPolicyForHTTPS
        from synapse.http.federation.matrix_federation_agent import (
            MatrixFederationAgent,
        )
        from synapse.http.federation.srv_resolver import SrvResolver
        from twisted.names import client as names_client

        server = _query_arg(request, "server")
        if not server:
            return 400, {"error": "?server=NAME is required"}
        hs = self._hs
        config = hs.config.server
        # Building the agent is Synapse's start-up work, not the request's.
        agent = MatrixFederationAgent(
            server_name=hs.hostname,
            reactor=hs.get_reactor(),
            clock=hs.get_clock(),
            tls_client_options_factory=FederationPolicyForHTTPS(hs.config),
            user_agent=hs.version_string.encode("ascii"),
            ip_allowlist=config.federation_ip_range_allowlist,
            ip_blocklist=config.federation_ip_range_blocklist,
            proxy_config=config.proxy_config,
            # Twisted's default resolver chain has a cache of its own.
            _srv_resolver=SrvResolver(
                dns_client=names_client.createResolver(), cache={}
            ),
        )
        # (The well-known resolver it builds has fresh caches of its own.)
        began = time.perf_counter()
        try:
            response = await agent.request(
                b"GET",
                f"matrix-federation://{server}/_matrix/federation/v1/version".encode(),
            ).addTimeout(AGENT_TIMEOUT_S, hs.get_reactor())
            body = await readBody(response)
            elapsed_ms = (time.perf_counter() - began) * 1000
            status = response.code
        finally:
            await agent._pool.closeCachedConnections()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body[:200].decode("utf-8", "replace")
        return 200, {"ms": round(elapsed_ms, 3), "status": status, "body": parsed}


class _OneAddress:
    """Every request of one replayed connection goes to its address, over
    TLS with its SNI, whatever the URI's host."""

    def __init__(self, reactor: Any, address: str, port: int, tls: Any) -> None:
        tcp: Any = TCP4ClientEndpoint(reactor, address, port)
        self._endpoint = wrapClientTLS(tls, tcp)

    def endpointForURI(self, uri: Any) -> Any:
        return self._endpoint


class ReplayResource(DirectServeJsonResource):
    def __init__(self, hs: HomeServer) -> None:
        super().__init__(clock=hs.get_clock())
        self._reactor = hs.get_reactor()

    async def _async_render_POST(self, request: SynapseRequest) -> tuple[int, Any]:
        body = parse_json_object_from_request(request)
        with open(body["ca_file"], "rb") as f:  # a small file, once per replay
            trust = ssl.Certificate.loadPEM(f.read())
        connections = body["connections"]
        statuses: dict[str, int] = {}
        began = time.perf_counter()
        await make_deferred_yieldable(
            defer.gatherResults(
                [
                    run_in_background(self._one_connection, c, trust, statuses)
                    for c in connections
                ],
                consumeErrors=True,
            )
        )
        elapsed_ms = (time.perf_counter() - began) * 1000
        return 200, {
            "ms": round(elapsed_ms, 3),
            "connections": len(connections),
            "requests": sum(len(c["requests"]) for c in connections),
            "statuses": statuses,
        }

    async def _one_connection(
        self, connection: dict[str, Any], trust: Any, statuses: dict[str, int]
    ) -> None:
        pool = HTTPConnectionPool(self._reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        tls = ssl.optionsForClientTLS(connection["sni"], trustRoot=trust)
        agent = Agent.usingEndpointFactory(
            self._reactor,
            _OneAddress(self._reactor, connection["address"], connection["port"], tls),
            pool=pool,
        )
        try:
            for r in connection["requests"]:
                headers = Headers({"Host": [r["host"]]})
                for name, value in r.get("headers", {}).items():
                    headers.addRawHeader(name, value)
                response = await make_deferred_yieldable(
                    agent.request(
                        r["method"].encode("ascii"),
                        f"https://{connection['sni']}{r['uri']}".encode(),
                        headers,
                    ).addTimeout(AGENT_TIMEOUT_S, self._reactor)
                )
                await make_deferred_yieldable(readBody(response))
                key = str(response.code)
                statuses[key] = statuses.get(key, 0) + 1
        finally:
            await make_deferred_yieldable(pool.closeCachedConnections())


class ReactorLag:
    """Ticks every 1 ms on the reactor and keeps how late each tick was, and
    when the garbage collector ran meanwhile."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._loop: task.LoopingCall | None = None
        self._last = 0.0
        # (when the tick ran, how late it was in ms)
        self.ticks: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=LAG_SAMPLES_MAX
        )
        # (start, end, generation) of each collector pass while running.
        self.gc_passes: collections.deque[tuple[float, float, int]] = collections.deque(
            maxlen=LAG_SAMPLES_MAX
        )
        self._gc_began = 0.0

    @property
    def lags_ms(self) -> list[float]:
        return [lag for _, lag in self.ticks]

    def _tick(self) -> None:
        now = time.perf_counter()
        self.ticks.append((now, max(0.0, (now - self._last - LAG_INTERVAL_S) * 1000)))
        self._last = now

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_passes.append(
                (self._gc_began, time.perf_counter(), int(info.get("generation", -1)))
            )

    def start(self) -> None:
        self.stop()
        self.ticks.clear()
        self.gc_passes.clear()
        gc.callbacks.append(self._on_gc)
        loop = task.LoopingCall(self._tick)
        loop.clock = self._reactor
        self._last = time.perf_counter()
        loop.start(LAG_INTERVAL_S, now=False)
        self._loop = loop

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _late_ticks_waiting_on_gc(self) -> tuple[int, int]:
        """(ticks later than LATE_TICK_MS, those whose wait overlaps a pass)."""
        late = [(at, lag) for at, lag in self.ticks if lag > LATE_TICK_MS]
        passes = list(self.gc_passes)
        on_gc = 0
        for at, lag in late:
            waited_from = at - lag / 1000 - LAG_INTERVAL_S
            if any(begin < at and end > waited_from for begin, end, _ in passes):
                on_gc += 1
        return len(late), on_gc

    def stats(self) -> dict[str, Any]:
        # None rather than NaN when there is no tick yet: Synapse's JSON
        # encoder refuses NaN.
        lags = self.lags_ms
        pauses_ms = [(end - begin) * 1000 for begin, end, _ in self.gc_passes]
        late, late_on_gc = self._late_ticks_waiting_on_gc()
        return {
            "running": self._loop is not None,
            "count": len(lags),
            "p50_ms": round(percentile(lags, 0.50), 3) if lags else None,
            "p99_ms": round(percentile(lags, 0.99), 3) if lags else None,
            "max_ms": round(max(lags), 3) if lags else None,
            "late_ticks": late,
            "late_ticks_waiting_on_gc": late_on_gc,
            "gc_passes": len(pauses_ms),
            "gc_max_ms": round(max(pauses_ms), 3) if pauses_ms else None,
            "gc_total_ms": round(sum(pauses_ms), 3),
        }


class LagResource(DirectServeJsonResource):
    def __init__(self, hs: HomeServer) -> None:
        super().__init__(clock=hs.get_clock())
        self._lag = ReactorLag(hs.get_reactor())

    async def _async_render_GET(self, request: SynapseRequest) -> tuple[int, Any]:
        action = _query_arg(request, "action") or "read"
        if action == "start":
            self._lag.start()
        elif action == "stop":
            self._lag.stop()
        elif action != "read":
            return 400, {"error": "action: start, read or stop"}
        return 200, self._lag.stats()


HEAP_PATH = "/_synapse/perfbench/heap"
HEAP_TOP = 25


def _live_objects_by_type() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _label_sets_by_metric() -> collections.Counter[str]:
    """How many label sets (children) each labelled Prometheus metric has:
    one that grows with runs is memory that grows with them."""
    from prometheus_client import REGISTRY

    counts: collections.Counter[str] = collections.Counter()
    for collector in list(REGISTRY._collector_to_names):
        children = getattr(collector, "_metrics", None)
        if isinstance(children, dict):
            counts[getattr(collector, "_name", repr(collector))] = len(children)
    return counts


class HeapTrace:
    """What the Python heap holds now that it did not hold at `start`:
    traced bytes by the owner of the allocating file, the biggest sources,
    and the live objects and metric label sets that grew. `start` again
    while tracing takes a new baseline without losing the traces."""

    def __init__(self) -> None:
        self._baseline: tracemalloc.Snapshot | None = None
        self._objects: collections.Counter[str] = collections.Counter()
        self._label_sets: collections.Counter[str] = collections.Counter()

    @property
    def started(self) -> bool:
        return self._baseline is not None

    def start(self) -> None:
        gc.collect()
        if not tracemalloc.is_tracing():
            tracemalloc.start(1)
        self._baseline = tracemalloc.take_snapshot()
        self._objects = _live_objects_by_type()
        self._label_sets = _label_sets_by_metric()

    def stop(self) -> None:
        tracemalloc.stop()
        self._baseline = None

    def read(self) -> dict[str, Any]:
        assert self._baseline is not None, "start first"
        gc.collect()
        now = tracemalloc.take_snapshot()
        # The tracer's own frames are not the homeserver's memory.
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
        diffs = now.filter_traces(ignore).compare_to(
            self._baseline.filter_traces(ignore), "lineno"
        )
        by_owner: collections.Counter[str] = collections.Counter()
        for diff in diffs:
            by_owner[_owner(diff.traceback[0].filename)] += diff.size_diff
        grown = _live_objects_by_type()
        grown.subtract(self._objects)
        label_sets = _label_sets_by_metric()
        label_sets.subtract(self._label_sets)
        return {
            "held_bytes_by_owner": dict(by_owner),
            "held_bytes": sum(by_owner.values()),
            "top": [
                {"where": f"{d.traceback[0].filename}:{d.traceback[0].lineno}",
                 "bytes": d.size_diff, "blocks": d.count_diff}
                for d in diffs[:HEAP_TOP]
            ],
            "metric_label_sets_grown": {
                name: n for name, n in label_sets.items() if n > 0
            },
            "objects_grown": dict(
                (name, n) for name, n in grown.most_common(HEAP_TOP) if n > 0
            ),
        }  # fmt: skip


class HeapResource(DirectServeJsonResource):
    def __init__(self, hs: HomeServer) -> None:
        super().__init__(clock=hs.get_clock())
        self._trace = HeapTrace()

    async def _async_render_GET(self, request: SynapseRequest) -> tuple[int, Any]:
        action = _query_arg(request, "action") or "read"
        if action == "start":
            self._trace.start()
            return 200, {"tracing": True}
        if action == "stop":
            self._trace.stop()
            return 200, {"tracing": False}
        if action != "read" or not self._trace.started:
            return 400, {"error": "action: start, then read or stop"}
        return 200, self._trace.read()


def _owner(filename: str) -> str:
    for marker, owner in (
        ("/synapse_fedhealth/", "module"),
        ("/tests/support/", "benchmark probe"),
        ("/synapse/", "synapse"),
        ("/twisted/", "twisted"),
    ):
        if marker in filename:
            return owner
    return "other"


class PerfProbeModule:
    def __init__(self, config: dict[str, Any], api: ModuleApi) -> None:
        hs: HomeServer = api._hs
        api.register_web_resource(AGENT_PATH, AgentVersionResource(hs))
        api.register_web_resource(LAG_PATH, LagResource(hs))
        api.register_web_resource(REPLAY_PATH, ReplayResource(hs))
        api.register_web_resource(HEAP_PATH, HeapResource(hs))

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        return config
