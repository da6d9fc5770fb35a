"""Renderers: the aligned text table and the log lines. Never a verdict."""

from __future__ import annotations

import shutil
import textwrap
import time

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
        line += f" Fix: {first.strip()}"
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


def render_text(report: Report, *, width: int | None = None) -> str:
    """The report as an aligned plain-text table for a terminal."""
    if width is None:
        width = max(80, min(shutil.get_terminal_size((100, 24)).columns, 160))
    generated = time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.generated_at / 1000)
    )
    lines = [
        f"synapse-fedhealth report for {report.server_name}",
        f"verdict: {report.verdict.value.upper()}  "
        f"(federation_ok: {str(report.federation_ok).lower()})",
        f"generated {generated} in {report.duration_ms} ms, as seen from "
        f"{report.vantage}",
    ]
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append("")
    id_width = max((len(c.id) for c in report.checks), default=10)
    target_width = max((len(c.target or "") for c in report.checks), default=0)
    prefix_width = 6 + id_width + 2 + (target_width + 2 if target_width else 0)
    summary_width = max(30, width - prefix_width)
    indent = " " * prefix_width
    for check in report.checks:
        head = f"{_STATUS_LABEL[check.status]:<4}  {check.id:<{id_width}}  "
        if target_width:
            head += f"{check.target or '':<{target_width}}  "
        summary = textwrap.wrap(check.summary, summary_width) or [""]
        lines.append(head + summary[0])
        lines.extend(indent + rest for rest in summary[1:])
        if check.fix and check.status in (Status.WARN, Status.FAIL):
            for i, fix_line in enumerate(
                _wrap_keeping_lines(check.fix, summary_width - 5)
            ):
                lines.append(indent + ("fix: " if i == 0 else "     ") + fix_line)
    lines.append("")
    lines.append(summary_line(report))
    # Last resort: the page, the CLI and a terminal must survive any value.
    return clean_text("\n".join(lines) + "\n")


def _wrap_keeping_lines(text: str, width: int) -> list[str]:
    """Wrap prose, but keep the line structure of snippets (YAML, nginx)."""
    out: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        lead = line[: len(line) - len(stripped)]
        wrapped = textwrap.wrap(
            stripped, max(20, width - len(lead)), break_on_hyphens=False
        )
        out.extend(lead + w for w in wrapped or [""])
    return out
