"""Renderers: the aligned text table and the log lines. Never a verdict."""

from __future__ import annotations

import os
import shutil
import textwrap
import time
from collections.abc import Mapping
from typing import TextIO

import attr

from synapse_fedhealth.remote_text import clean_line, clean_text
from synapse_fedhealth.report import CheckResult, Report, Status, Verdict

_STATUS_LABEL = {
    Status.OK: "ok",
    Status.WARN: "WARN",
    Status.FAIL: "FAIL",
    Status.SKIP: "skip",
}


def problem_line(check: CheckResult) -> str:
    """One log line per problem: the check id, what is wrong, and the fix."""
    target = f" [{check.target}]" if check.target else ""
    line = f"{check.id}{target}: {check.summary}"
    if check.fix:
        # A log line stays one line: multi-line snippets are left to the
        # report and the docs.
        first, _, rest = check.fix.strip().partition("\n")
        # "; fix:" keeps the summary and the fix apart even when the summary
        # has no full stop of its own.
        line += f"; fix: {first.strip()}"
        if rest.strip() and check.docs not in first:
            line += f" (example in {check.docs})"
    # Last resort: remote text is cleaned where it enters, but a log line
    # must stay one writable line whatever a check put in it.
    return clean_line(line)


def summary_line(report: Report) -> str:
    """`federation OK` / `federation BROKEN: ...` (SPEC 2.3)."""
    failing = sorted({c.id for c in report.checks if c.status is Status.FAIL})
    warning = sorted({c.id for c in report.checks if c.status is Status.WARN})
    if report.verdict is Verdict.DISABLED:
        return "federation DISABLED by config (federation_domain_whitelist is empty)"
    if report.verdict is Verdict.BROKEN:
        return f"federation BROKEN: {', '.join(failing)} failed"
    if report.verdict is Verdict.DEGRADED:
        return f"federation OK (degraded: {', '.join(warning)})"
    return "federation OK"


# Text output fits a standard terminal.
TEXT_WIDTH = 80
# Below this many columns for the summary, a row puts the summary under its
# check id instead of beside it.
_MIN_SUMMARY_COLUMNS = 36
_STACKED_INDENT = 6

_ANSI = {
    Status.OK: "32",  # green
    Status.WARN: "33",  # yellow
    Status.FAIL: "1;31",  # bold red
    Status.SKIP: "2",  # dim
}
_VERDICT_STATUS = {
    Verdict.OK: Status.OK,
    Verdict.DEGRADED: Status.WARN,
    Verdict.BROKEN: Status.FAIL,
    Verdict.DISABLED: Status.SKIP,
}


def wants_colour(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR (no-color.org) or
    TERM=dumb."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def terminal_width(stream: TextIO) -> int:
    """80 columns, or fewer on a narrower terminal (never below 60)."""
    if not is_terminal(stream):
        return TEXT_WIDTH
    return max(60, min(TEXT_WIDTH, shutil.get_terminal_size((TEXT_WIDTH, 24)).columns))


def render_for_terminal(report: Report, stream: TextIO) -> str:
    """The text report for a command's output stream: 80 columns (fewer on a
    narrower terminal), coloured only on a terminal."""
    from synapse_fedhealth.check_docs import installed_docs_path

    return render_text(
        report,
        width=terminal_width(stream),
        colour=wants_colour(stream),
        docs_path=installed_docs_path(),
    )


def _paint(text: str, status: Status, colour: bool) -> str:
    return f"\x1b[{_ANSI[status]}m{text}\x1b[0m" if colour else text


def render_text(
    report: Report,
    *,
    width: int = TEXT_WIDTH,
    colour: bool = False,
    docs_path: str | None = None,
) -> str:
    """The report as an aligned plain-text table, at most `width` columns
    (colour codes, when asked for, take no columns). `docs_path`: the
    installed checks.md, named under the problems so the `docs/checks.md#…`
    references lead somewhere on this machine."""
    # Last resort, before any colour code goes in: the page, the CLI and a
    # terminal must survive any value.
    report = cleaned(report)
    generated = time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.generated_at / 1000)
    )
    lines = [
        *textwrap.wrap(f"synapse-fedhealth report for {report.server_name}", width),
        f"verdict: {report.verdict.value.upper()}  "
        f"(federation_ok: {str(report.federation_ok).lower()})",
        *textwrap.wrap(
            f"generated {generated} in {report.duration_ms} ms, as seen from "
            f"{report.vantage}",
            width,
        ),
    ]
    for note in report.notes:
        lines.extend(textwrap.wrap(f"note: {note}", width, subsequent_indent="      "))
    lines.append("")
    id_width = max((len(c.id) for c in report.checks), default=10)
    target_width = max((len(c.target or "") for c in report.checks), default=0)
    prefix_width = 6 + id_width + 2 + (target_width + 2 if target_width else 0)
    stacked = width - prefix_width < _MIN_SUMMARY_COLUMNS
    if stacked:
        prefix_width = _STACKED_INDENT
    summary_width = width - prefix_width
    indent = " " * prefix_width
    for check in report.checks:
        label = _paint(f"{_STATUS_LABEL[check.status]:<4}", check.status, colour)
        # Paths and host names keep their hyphens (only over-long words break).
        summary = textwrap.wrap(
            check.summary, summary_width, break_on_hyphens=False
        ) or [""]
        if stacked:
            head = f"{label}  {check.id}"
            if check.target and 6 + len(check.id) + 2 + len(check.target) <= width:
                head += f"  {check.target}"
            elif check.target:
                summary.insert(0, check.target)
            lines.append(head)
            lines.extend(indent + part for part in summary)
        else:
            head = f"{label}  {check.id:<{id_width}}  "
            if target_width:
                head += f"{check.target or '':<{target_width}}  "
            lines.append(head + summary[0])
            lines.extend(indent + rest for rest in summary[1:])
        if check.fix and check.status in (Status.WARN, Status.FAIL):
            # Under the status column rather than the summary's: snippets
            # need the room.
            fix_indent = " " * _STACKED_INDENT
            for i, fix_line in enumerate(
                _wrap_keeping_lines(check.fix, width - _STACKED_INDENT - 5)
            ):
                lines.append(fix_indent + ("fix: " if i == 0 else "     ") + fix_line)
    lines.append("")
    if docs_path and report.problems():
        lines.extend(
            textwrap.wrap(
                f"Each check is explained, with its fix, under its id in "
                f"docs/checks.md, installed with the module as {docs_path}",
                width,
                break_on_hyphens=False,
            )
        )
        lines.append("")
    verdict_status = _VERDICT_STATUS[report.verdict]
    for part in textwrap.wrap(summary_line(report), width, subsequent_indent="  "):
        lines.append(_paint(part, verdict_status, colour))
    return "\n".join(lines) + "\n"


def cleaned(report: Report) -> Report:
    """`report` with every text a renderer prints cleaned of control
    characters, escape sequences and lone surrogates."""
    return attr.evolve(
        report,
        server_name=clean_line(report.server_name),
        vantage=clean_line(report.vantage),
        notes=tuple(clean_text(n) for n in report.notes),
        checks=tuple(
            attr.evolve(
                c,
                id=clean_line(c.id),
                summary=clean_text(c.summary),
                target=None if c.target is None else clean_line(c.target),
                fix=None if c.fix is None else clean_text(c.fix),
            )
            for c in report.checks
        ),
    )


def _wrap_keeping_lines(text: str, width: int) -> list[str]:
    """Wrap prose, but keep the line structure of snippets (YAML, nginx)."""
    out: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        lead = line[: len(line) - len(stripped)]
        wrapped = textwrap.wrap(
            stripped, max(1, width - len(lead)), break_on_hyphens=False
        )
        out.extend(lead + w for w in wrapped or [""])
    return out
