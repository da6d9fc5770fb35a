"""How the network engine's run time grows with the number of targets.

    python benchmarks/engine_scaling.py [--runs N] [--targets 1 4 16]
                                        [--profile FILE]

`NetworkChecker` (in this process, as the module runs it) checks a server
name whose SRV record points at a host with 1, 4 or 16 A records; every
address serves the federation version and keys over TLS (a trustme CA) from
a separate server process, as a homeserver and its proxy are separate from
the process that checks them. Then the follow-ups that go to those targets
run as in the module: the signed request (federation.signed_request, to at
most rc_federation's `sleep_limit` addresses) and the echo through the
federation path (proxy.forwarded_headers); the server answers both 404,
which costs what a real answer costs on the wire. The `full` row adds the start of the chain:
the well-known on port 443 delegates to the name with the SRV record (port
443 on 127.x addresses needs root, as the integration tests do; without it
the row is skipped).

Prints the median and best wall time of N runs per row, after one untimed
warm-up run, and the TLS handshakes per run (connections the server
accepted). `--profile FILE` writes a cProfile of the 16-target runs.
Everything listens on 127.0.1.x; nothing leaves the machine. The server
process stops when this one closes its stdin.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SERVER_NAME = "bench.test"
DELEGATING_NAME = "delegating.test"
TARGET_HOST = "hosts.test"
DELEGATED_NAME = "delegated.test"
WELL_KNOWN_IP = "127.0.1.200"
NOTHING_IP = "127.0.1.201"


def _target_ips(count: int) -> list[str]:
    return [f"127.0.1.{i}" for i in range(1, count + 1)]


# -- the server process ----------------------------------------------------------


def _serve(ca_dir: str, max_targets: int) -> None:
    """Serves until stdin closes: the federation endpoints on every target
    address (one port), the well-known on WELL_KNOWN_IP:443 when allowed.
    Prints {"port": P, "well_known": bool} once listening."""
    import trustme
    from twisted.internet import reactor, ssl, stdio
    from twisted.protocols.basic import LineReceiver
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    from tests.integration.test_engine_loopback import FederationResource

    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(ca_dir, "ca.pem"))
    leaf = ca.issue_cert(SERVER_NAME, DELEGATING_NAME, DELEGATED_NAME)
    options = ssl.PrivateCertificate.loadPEM(
        leaf.private_key_and_cert_chain_pem.bytes()
    ).options()

    class WellKnown(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps({"m.server": DELEGATED_NAME}).encode()

    accepted = [0]  # TLS connections, so handshakes

    class CountingSite(Site):
        def buildProtocol(self, addr: Any) -> Any:
            accepted[0] += 1
            return super().buildProtocol(addr)  # type: ignore[no-untyped-call]

    listener: Any = reactor
    ports = []
    # One port per server name: the keys are signed for the name checked.
    for name in (SERVER_NAME, DELEGATING_NAME):
        site = CountingSite(FederationResource(name))  # type: ignore[no-untyped-call]
        first = listener.listenSSL(0, site, options, interface=_target_ips(1)[0])
        port = int(first.getHost().port)
        for ip in _target_ips(max_targets)[1:]:
            listener.listenSSL(port, site, options, interface=ip)
        ports.append(port)
    try:
        well_known_site = CountingSite(WellKnown())  # type: ignore[no-untyped-call]
        listener.listenSSL(443, well_known_site, options, interface=WELL_KNOWN_IP)
        well_known = True
    except Exception:
        well_known = False

    class Control(LineReceiver):
        """A line on stdin asks for the connections accepted so far; EOF
        stops the server."""

        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            self.sendLine(str(accepted[0]).encode())  # type: ignore[no-untyped-call]

        def connectionLost(self, reason: Any = None) -> None:
            if listener.running:
                listener.stop()

    stdio.StandardIO(Control())
    print(json.dumps({"ports": ports, "well_known": well_known}), flush=True)
    listener.run()


# -- the measuring process -------------------------------------------------------


def _zone(count: int, ports: list[int]) -> dict[tuple[str, str], Any]:
    return {
        (f"_matrix-fed._tcp.{SERVER_NAME}", "SRV"): [f"10 5 {ports[0]} {TARGET_HOST}."],
        (f"_matrix-fed._tcp.{DELEGATED_NAME}", "SRV"): [
            f"10 5 {ports[1]} {TARGET_HOST}."
        ],
        # Nothing listens there: no well-known, a refused connection.
        (SERVER_NAME, "A"): [NOTHING_IP],
        (TARGET_HOST, "A"): _target_ips(count),
        (DELEGATING_NAME, "A"): [WELL_KNOWN_IP],
    }


def _measure(args: argparse.Namespace) -> int:
    from twisted.internet import defer, reactor, task
    from twisted.python.threadpool import ThreadPool

    from synapse_fedhealth.echo import NonceBook
    from synapse_fedhealth.engine.deadline import Deadline
    from synapse_fedhealth.engine.network_checker import NetworkChecker
    from synapse_fedhealth.families.outside import ForwardedHeadersFamily
    from synapse_fedhealth.families.targets import TargetInsiderFamily
    from synapse_fedhealth.homeserver import HomeserverSnapshot
    from synapse_fedhealth.report import Status
    from synapse_fedhealth.runner import CheckFamily, FamilyOutcome
    from synapse_fedhealth.settings import RunSettings
    from synapse_fedhealth.wiring import ProcessIO
    from tests.integration.test_engine_loopback import ZoneDnsServer
    from tests.unit.insider_helpers import make_key

    ca_dir = tempfile.mkdtemp(prefix="fedhealth-scaling-")
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", ca_dir, str(max(args.targets))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    hello = json.loads(server.stdout.readline())
    ports, has_well_known = list(hello["ports"]), bool(hello["well_known"])
    ca_file = os.path.join(ca_dir, "ca.pem")
    rows: list[tuple[str, list[float], list[int]]] = []
    failures: list[str] = []
    signing_key = make_key()
    nonces = NonceBook(secret=b"b" * 32)

    async def _run_family(family: CheckFamily, deadline: Deadline) -> FamilyOutcome:
        return await family.run(deadline)

    def handshakes_so_far() -> int:
        # Between runs, untimed: the server answers at once.
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write("count\n")
        server.stdin.flush()
        return int(server.stdout.readline())

    async def one_run(
        io_process: ProcessIO, dns: ZoneDnsServer, name: str, expected: int
    ) -> float:
        settings = RunSettings(
            server_name=name,
            timeout_s=10.0,
            ca_files=(ca_file,),
            dns_servers=(dns.address,),
            user_agent="Synapse/benchmark",
        )
        started = time.perf_counter()
        io = io_process.for_run(settings)
        deadline = Deadline.after(reactor, settings.timeout_s)
        try:
            findings = await NetworkChecker(io, settings).check(deadline)
            # The follow-ups that go to the targets, at once as the runner
            # starts them.
            snapshot = HomeserverSnapshot(
                server_name=name,
                public_baseurl=None,
                listeners=(),
                signing_keys=(signing_key,),
            )
            follow_ups: list[CheckFamily] = [
                TargetInsiderFamily(io, snapshot, findings),
                ForwardedHeadersFamily(
                    io, public_baseurl=None, echo=nonces, network=findings
                ),
            ]
            await defer.gatherResults(
                [defer.ensureDeferred(_run_family(f, deadline)) for f in follow_ups],
                consumeErrors=True,
            )
            elapsed = time.perf_counter() - started
        finally:
            # As the runner does when a run ends.
            if io.targets is not None:
                io.targets.close_all()
        # A fast run that finds problems measures nothing useful.
        bad = [
            f"{c.id} {c.status.value}"
            for c in findings.checks
            if c.id.startswith(("connection.", "tls.", "federation."))
            and c.status is not Status.OK
        ]
        if len(findings.targets) != expected or bad:
            failures.append(
                f"{name} x{expected}: {len(findings.targets)} targets {bad}"
            )
        return elapsed

    async def main(_: Any) -> None:
        threadpool = ThreadPool(minthreads=1, maxthreads=8, name="scaling-bench")
        threadpool.start()
        process_io = ProcessIO(reactor, threadpool=threadpool)
        profiler = cProfile.Profile() if args.profile else None
        try:
            plan = [(f"{n} target(s)", n, SERVER_NAME) for n in args.targets]
            if has_well_known:
                top = max(args.targets)
                plan.append((f"full, {top} target(s)", top, DELEGATING_NAME))
            for label, count, name in plan:
                dns = ZoneDnsServer(_zone(count, ports))
                try:
                    await one_run(process_io, dns, name, count)  # warm-up
                    times = []
                    handshakes = []
                    for _ in range(args.runs):
                        profiling = profiler is not None and count == max(args.targets)
                        before = handshakes_so_far()
                        if profiling:
                            profiler.enable()  # type: ignore[union-attr]
                        times.append(await one_run(process_io, dns, name, count))
                        if profiling:
                            profiler.disable()  # type: ignore[union-attr]
                        # Let the closed connections go before the next run.
                        await task.deferLater(reactor, 0.01, lambda: None)
                        handshakes.append(handshakes_so_far() - before)
                    rows.append((label, times, handshakes))
                finally:
                    dns.stop()
        finally:
            threadpool.stop()
        if profiler is not None:
            profiler.dump_stats(args.profile)
        await defer.succeed(None)

    try:
        task.react(lambda r: defer.ensureDeferred(main(r)))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)

    base = statistics.median(rows[0][1]) if rows else 0.0
    print(f"{'':22} {'median':>9} {'best':>9} {'vs first':>9} {'handshakes':>11}")
    for label, times, handshakes in rows:
        median = statistics.median(times)
        print(
            f"{label:22} {median * 1000:7.1f}ms {min(times) * 1000:7.1f}ms "
            f"{median / base:8.2f}x {statistics.median(handshakes):11g}"
        )
    if not has_well_known:
        print("(no `full` row: port 443 could not be bound)")
    for line in failures[:10]:
        print("UNHEALTHY RUN:", line, file=sys.stderr)
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--profile", help="write a cProfile of the largest row")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]))
        return
    sys.exit(_measure(args))


if __name__ == "__main__":
    main()
