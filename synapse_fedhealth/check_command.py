"""`python -m synapse_fedhealth check SERVER_NAME`: the engine, from outside.

Never imports Synapse (start-up must stay under a second). Checks that need
the server's own config or key are reported as `skip`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from synapse_fedhealth._version import __version__
from synapse_fedhealth.check_ids import ids_needing_more_than_outside_view
from synapse_fedhealth.report import Report, skip

if TYPE_CHECKING:
    from synapse_fedhealth.settings import RunSettings
    from synapse_fedhealth.wiring import RunIO

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_USAGE = 2
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 300.0

INSIDER_ONLY_REASON = "needs the server's own config/key: run inside Synapse"
# "config" stands for every config.* check.
INSIDER_ONLY_IDS = ("config",) + tuple(
    i for i in ids_needing_more_than_outside_view() if not i.startswith("config.")
)
OUTSIDER_NOTE = (
    "Checked from outside with `python -m synapse_fedhealth check`: the verdict "
    "covers only what an outsider can see (no config, no signing key)."
)


def add_check_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check any server's federation from outside",
        description="Check a Matrix server's federation as a remote Synapse sees it.",
    )
    parser.add_argument("server_name", metavar="SERVER_NAME")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"wall-clock budget of the whole run in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--ca-file",
        action="append",
        default=[],
        metavar="F",
        help="CA bundle to judge certificates with (default: the system trust store)",
    )
    parser.add_argument(
        "--dns-server",
        action="append",
        default=[],
        metavar="IP",
        help="DNS server to resolve with, IP or IP:PORT (default: /etc/resolv.conf)",
    )
    parser.set_defaults(func=main_check)


def _usage_error(message: str) -> int:
    print(f"python -m synapse_fedhealth check: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main_check(argv_namespace: argparse.Namespace) -> int:
    args = argv_namespace
    from cryptography import x509

    from synapse_fedhealth.config import parse_dns_server
    from synapse_fedhealth.matrix_names import parse_server_name

    try:
        parse_server_name(args.server_name)
    except ValueError as e:
        return _usage_error(f"{args.server_name!r} is not a server name: {e}")
    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        return _usage_error(
            f"--timeout must be between 0 and {MAX_TIMEOUT_S:g} seconds"
        )
    for entry in args.dns_server:
        try:
            parse_dns_server(entry)
        except ValueError as e:
            return _usage_error(f"--dns-server: {e}")
    max_ca_file_bytes = 1024 * 1024  # far above a real bundle (Debian's: 215 KiB)
    for path in args.ca_file:
        # Bounded read: a path such as /dev/zero would otherwise be read forever.
        try:
            with open(path, "rb") as f:
                pem = f.read(max_ca_file_bytes + 1)
        except OSError as e:
            return _usage_error(f"--ca-file: {e}")
        if len(pem) > max_ca_file_bytes:
            return _usage_error(f"--ca-file: {path} is larger than 1 MiB")
        # The same parser the trust store uses, so what passes here loads there.
        try:
            certificates = x509.load_pem_x509_certificates(pem)
        except ValueError:
            certificates = []
        if not certificates:
            return _usage_error(f"--ca-file: {path} contains no PEM certificate")

    from synapse_fedhealth.settings import RunSettings

    settings = RunSettings(
        server_name=args.server_name,
        timeout_s=args.timeout,
        ca_files=tuple(args.ca_file),
        dns_servers=tuple(args.dns_server),
        user_agent=f"synapse-fedhealth/{__version__}",
    )
    report = _run_in_reactor(settings)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=False))
    else:
        from synapse_fedhealth.render.text import render_for_terminal

        sys.stdout.write(render_for_terminal(report, sys.stdout))
    return EXIT_OK if report.federation_ok else EXIT_BROKEN


class Progress:
    """`checking NAME: 1.2 s (at most 10 s)` on stderr while the run is in
    flight, on a terminal only; cleared at the end so the report starts at
    column 0."""

    INTERVAL_S = 0.2

    def __init__(self, reactor: Any, stream: TextIO, settings: RunSettings) -> None:
        from twisted.internet import task

        from synapse_fedhealth.render.text import is_terminal

        self._reactor = reactor
        self._stream = stream
        self._server_name = settings.server_name
        self._timeout_s = settings.timeout_s
        self._started = reactor.seconds()
        self._loop: task.LoopingCall | None = None
        if is_terminal(stream):
            self._loop = task.LoopingCall(self._draw)
            self._loop.clock = reactor
            # A closed terminal ends the progress line, never the run.
            self._loop.start(self.INTERVAL_S, now=True).addErrback(lambda _: None)

    def _draw(self) -> None:
        elapsed = self._reactor.seconds() - self._started
        line = (
            f"checking {self._server_name}: {elapsed:.1f} s "
            f"(at most {self._timeout_s:g} s)"
        )
        # \r and "erase line": the next draw or the final clear overwrites it.
        self._stream.write("\r\x1b[K" + line[:79])
        self._stream.flush()

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def _run_in_reactor(settings: RunSettings) -> Report:
    from twisted.internet import defer, task

    from synapse_fedhealth.wiring import ProcessIO

    outcome: dict[str, Report] = {}

    def _main(reactor: Any) -> defer.Deferred[None]:
        io = ProcessIO(reactor)
        reactor.addSystemEventTrigger("during", "shutdown", io.stop)
        progress = Progress(reactor, sys.stderr, settings)
        reactor.addSystemEventTrigger("before", "shutdown", progress.stop)

        async def _go() -> None:
            try:
                outcome["report"] = await build_outside_report(
                    reactor, settings, io.for_run(settings)
                )
            finally:
                progress.stop()

        return defer.ensureDeferred(_go())

    try:
        task.react(_main)
    except SystemExit as e:
        if "report" not in outcome:
            raise RuntimeError(
                f"the check stopped without a report (exit {e.code})"
            ) from None
    return outcome["report"]


async def build_outside_report(
    reactor: Any, settings: RunSettings, io: RunIO
) -> Report:
    """Run the outsider's families and build its `Report` (tested directly)."""
    from synapse_fedhealth.families import OutsiderFamilies
    from synapse_fedhealth.runner import CheckRunner

    families = OutsiderFamilies()
    runner = CheckRunner(
        reactor=reactor,
        server_name=settings.server_name,
        timeout_s=settings.timeout_s,
        static_checks=lambda: [
            skip(check_id, f"skipped: {INSIDER_ONLY_REASON}")
            for check_id in INSIDER_ONLY_IDS
        ],
        families=lambda: families.first(io, settings),
        notes=[OUTSIDER_NOTE],
        connections=io.targets,
    )
    return await runner.run()
