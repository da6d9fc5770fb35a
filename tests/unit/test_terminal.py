"""Text output on a terminal: 80 columns, colour only on a TTY (not with
NO_COLOR), progress on stderr while `check` runs, log lines with the summary
and the fix apart."""

from __future__ import annotations

import gc
import io
import re
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.check_command import (
    INSIDER_ONLY_IDS,
    INSIDER_ONLY_REASON,
    OUTSIDER_NOTE,
    Progress,
)
from synapse_fedhealth.check_docs import installed_docs_path
from synapse_fedhealth.render.text import (
    TEXT_WIDTH,
    problem_line,
    render_for_terminal,
    render_text,
    wants_colour,
)
from synapse_fedhealth.report import Report, fail, ok, warn
from synapse_fedhealth.report import skip as skipped
from synapse_fedhealth.settings import RunSettings
from tests.unit.fakes import report_of

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


WIDE = report_of(
    ok("discovery.well_known_consistency", "the well-known answers agree " * 4),
    fail(
        "connection.reachable",
        "connection refused by [2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:8448",
        target="[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:8448",
        fix="Open port 8448 in the firewall, e.g.:\n"
        "    nft add rule inet filter input tcp dport 8448 accept\n"
        "https://example.com/" + "a" * 120,
    ),
    warn("federation.key_matches_local", "x" * 200, fix="y " * 100),
    skipped("federation.notary", "skipped: " + "z" * 90),
    notes=("a note that is long enough to need more than one line " * 3,),
)


def _outside_report() -> Report:
    """What `check` reports from outside: the insider-only checks skipped,
    and the outsider's note."""
    return report_of(
        *(skipped(i, f"skipped: {INSIDER_ONLY_REASON}") for i in INSIDER_ONLY_IDS),
        fail("discovery.well_known", "no well-known", fix="Publish it"),
        notes=(OUTSIDER_NOTE,),
    )


def test_text_fits_80_columns() -> None:
    for report in (WIDE, _outside_report()):
        text = render_text(report)
        too_wide = [line for line in text.splitlines() if len(line) > TEXT_WIDTH]
        assert not too_wide, too_wide
        for check in report.checks:
            assert check.id in text
    # The snippet keeps its indentation.
    assert "    nft add rule inet filter input tcp dport 8448 accept" in render_text(
        WIDE
    )


def test_outsider_note_is_wrapped() -> None:
    text = render_text(_outside_report())
    notes = [line for line in text.splitlines() if line.startswith("note: ")]
    assert notes and all(len(line) <= TEXT_WIDTH for line in notes)
    assert "covers only what an outsider can see" in " ".join(text.split())


def test_colour_changes_nothing_but_the_codes() -> None:
    plain = render_text(WIDE)
    coloured = render_text(WIDE, colour=True)
    assert ANSI.search(coloured) and not ANSI.search(plain)
    assert "\x1b[1;31mFAIL\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == plain


def test_colour_only_on_a_terminal_without_no_color() -> None:
    assert wants_colour(FakeTerminal(), environ={})
    assert not wants_colour(FakeTerminal(), environ={"NO_COLOR": "1"})
    assert not wants_colour(FakeTerminal(), environ={"TERM": "dumb"})
    assert not wants_colour(io.StringIO(), environ={})
    piped = render_for_terminal(WIDE, io.StringIO())
    assert not ANSI.search(piped)
    assert max(len(line) for line in piped.splitlines()) <= TEXT_WIDTH


def test_log_line_separates_summary_and_fix() -> None:
    line = problem_line(
        warn(
            "config.x_forwarded",
            "without it Synapse sees the proxy's address as every client's",
            fix="Set `x_forwarded: true` on this listener",
        )
    )
    assert line == (
        "config.x_forwarded: without it Synapse sees the proxy's address as "
        "every client's; fix: Set `x_forwarded: true` on this listener"
    )
    assert " Fix: " not in line


class ProgressTest(SynchronousTestCase):
    settings = RunSettings(server_name="example.com", timeout_s=10)

    def test_progress_on_a_terminal_is_cleared_at_the_end(self) -> None:
        reactor = MemoryReactorClock()
        stream = FakeTerminal()
        progress = Progress(reactor, stream, self.settings)
        reactor.advance(1.2)
        drawn = stream.getvalue()
        assert "\rchecking example.com: 1.2 s (at most 10 s)" in ANSI.sub("", drawn)
        progress.stop()
        assert stream.getvalue().endswith("\r\x1b[K")
        reactor.advance(1)
        assert stream.getvalue().endswith("\r\x1b[K")  # nothing drawn after stop
        progress.stop()  # twice is harmless

    def test_a_closed_terminal_stops_only_the_progress(self) -> None:
        class ClosedTerminal(FakeTerminal):
            def write(self, text: str) -> int:
                raise OSError("EIO")

        reactor = MemoryReactorClock()
        progress = Progress(reactor, ClosedTerminal(), self.settings)
        reactor.advance(1)
        progress.stop()
        del progress
        gc.collect()  # an unhandled failed Deferred is logged when collected
        assert not self.flushLoggedErrors(OSError)

    def test_no_progress_when_not_a_terminal(self) -> None:
        reactor = MemoryReactorClock()
        stream = io.StringIO()
        progress = Progress(reactor, stream, self.settings)
        reactor.advance(3)
        progress.stop()
        assert stream.getvalue() == ""


def test_text_names_the_installed_docs_when_there_is_a_problem() -> None:
    path = installed_docs_path()
    assert path is not None and path.endswith("synapse_fedhealth/_docs/checks.md")
    assert Path(path).read_text() == (ROOT / "docs" / "checks.md").read_text()
    text = render_text(WIDE, docs_path=path)
    assert path in "".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= TEXT_WIDTH
    healthy = report_of(ok("federation.version", "Synapse 1.163"))
    assert "docs/checks.md" not in render_text(healthy, docs_path=path)
