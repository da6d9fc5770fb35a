"""The report as a self-contained HTML status page (`?format=html`, SPEC 2.2).

One document, no external assets, no script: the style sheet is inline and
allowed by its hash in the Content-Security-Policy, so nothing else can run
or load. Every string that comes from a report (and so possibly from a
remote server) goes through `html.escape`.

The page never writes the access token anywhere. Refreshing is a form whose
password field the admin fills in: the token travels only when they type it,
as the `access_token` query parameter Synapse's admin API accepts.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from html import escape

import attr

from synapse_fedhealth.render.text import cleaned, summary_line
from synapse_fedhealth.report import CheckResult, Report, Status, Verdict

# The refresh form submits here; relative to the page's own path
# (`/_synapse/fedhealth`), so it also works under a path prefix.
FORM_ACTION = "fedhealth"

_MARK = {
    Status.OK: ("\u2713", "ok"),
    Status.WARN: ("!", "warn"),
    Status.FAIL: ("\u2717", "fail"),
    Status.SKIP: ("\u2013", "skip"),
}

_VERDICT_CLASS = {
    Verdict.OK: "ok",
    Verdict.DEGRADED: "warn",
    Verdict.BROKEN: "fail",
    Verdict.DISABLED: "skip",
}

STYLE = """
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
margin:0 auto;max-width:72rem;padding:1rem 1.5rem;color:#1b1f24;background:#fff}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.15rem;margin-top:1.6rem}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:.9em}
pre{background:#f3f4f6;border:1px solid #d9dce1;padding:.6rem .8rem;overflow-x:auto;
white-space:pre}
.verdict{font-size:1.6rem;font-weight:700;padding:.8rem 1rem;border-radius:.4rem;
margin:.8rem 0}
.verdict.ok{background:#dcf5e3;color:#0b5a26}.verdict.warn{background:#fff3cd;color:#6b4d00}
.verdict.fail{background:#fde0df;color:#8a1410}.verdict.skip{background:#e8eaee;color:#333}
.meta{color:#4b5563;font-size:.9rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid #e5e7eb}
.mark{font-weight:700;white-space:nowrap}
.mark.ok{color:#137333}.mark.warn{color:#8a6100}.mark.fail{color:#b3261e}.mark.skip{color:#6b7280}
tr.fail td{background:#fff5f5}tr.warn td{background:#fffbeb}
ol.chain{list-style:none;display:flex;flex-wrap:wrap;padding:0;gap:.3rem;align-items:stretch}
ol.chain li{border:2px solid #d1d5db;border-radius:.4rem;padding:.4rem .6rem;min-width:7rem}
ol.chain li.ok{border-color:#34a853}ol.chain li.warn{border-color:#e0a800}
ol.chain li.fail{border-color:#d93025;background:#fff5f5}
ol.chain li.skip{border-style:dashed}
ol.chain li+li::before{content:"\\2192";margin-right:.3rem;color:#6b7280}
.breaks{font-weight:700;color:#b3261e}
.problem{border-left:4px solid #d1d5db;padding:.2rem .9rem;margin:1rem 0}
.problem.fail{border-color:#d93025}.problem.warn{border-color:#e0a800}
details{margin:.5rem 0}summary{cursor:pointer;color:#1a56b0}
form{margin:1rem 0}input[type=password]{width:22rem;max-width:100%}
"""

STYLE_CSP_SOURCE = (
    "'sha256-"
    + base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")
    + "'"
)

# Nothing from anywhere but this document: no script at all, the one inline
# style sheet by its hash, the form only to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src {STYLE_CSP_SOURCE}; "
    "img-src 'none'; "
    "form-action 'self'; "
    "base-uri 'none'; "
    "frame-ancestors 'none'"
)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ChainStage:
    """One link of the discovery chain and the checks that judge it."""

    label: str
    check_ids: tuple[str, ...]


DISCOVERY_CHAIN: tuple[ChainStage, ...] = (
    ChainStage("server name", ("config.server_name",)),
    ChainStage(
        "well-known", ("discovery.well_known", "discovery.well_known_consistency")
    ),
    ChainStage("SRV", ("discovery.srv",)),
    ChainStage(
        "targets", ("discovery.addresses", "discovery.targets", "connection.reachable")
    ),
    ChainStage("TLS", ("tls.handshake", "tls.certificate")),
    ChainStage(
        "endpoints",
        (
            "federation.version",
            "federation.keys",
            "federation.key_matches_local",
            "federation.signed_request",
        ),
    ),
)


def _worst(checks: Sequence[CheckResult]) -> Status:
    judged = [c for c in checks if c.status is not Status.SKIP]
    if not judged:
        return Status.SKIP
    return max(judged, key=lambda c: c.status.severity).status


def _mark(status: Status) -> str:
    symbol, word = _MARK[status]
    return f'<span class="mark {word}">{symbol} {word}</span>'


_INLINE_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")


def _inline(text: str) -> str:
    """Escape, then turn `code` into <code> (links keep only their text)."""
    out = escape(_LINK.sub(r"\1", text))
    return _INLINE_CODE.sub(r"<code>\1</code>", out)


def markdown_to_html(markdown: str) -> str:
    """The small Markdown subset docs/checks.md uses: paragraphs, `- ` lists,
    fenced code blocks and `inline code`. Everything is escaped first."""
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if items:
            out.append(
                "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>"
            )
            items.clear()

    for line in markdown.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre><code>{escape(chr(10).join(code))}</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            flush()
            code = []
        elif not line.strip():
            flush()
        elif line.startswith("#"):
            flush()
            out.append(f"<h4>{_inline(line.lstrip('#').strip())}</h4>")
        elif line.startswith("- "):
            if paragraph:
                flush()
            items.append(line[2:].strip())
        elif items and line.startswith("  "):
            items[-1] += " " + line.strip()
        else:
            paragraph.append(line.strip())
    if code is not None:
        out.append(f"<pre><code>{escape(chr(10).join(code))}</code></pre>")
    flush()
    return "\n".join(out)


def fix_to_html(fix: str) -> str:
    """A fix: its first line is prose, the lines after it a snippet (kept as
    code, with its indentation)."""
    first, _, rest = fix.strip("\n").partition("\n")
    out = f"<p>{_inline(first.strip())}</p>"
    if rest.strip():
        out += f"<pre><code>{escape(rest.rstrip())}</code></pre>"
    return out


def _chain(report: Report) -> str:
    by_id: dict[str, list[CheckResult]] = {}
    for check in report.checks:
        by_id.setdefault(check.id, []).append(check)
    broken_seen = False
    cells = []
    for stage in DISCOVERY_CHAIN:
        checks = [c for i in stage.check_ids for c in by_id.get(i, [])]
        status = _worst(checks)
        word = _MARK[status][1]
        note = ""
        if status is Status.FAIL and not broken_seen:
            broken_seen = True
            note = '<div class="breaks">breaks here</div>'
        failing = [c.id for c in checks if c.status in (Status.FAIL, Status.WARN)]
        detail = (
            "<div><small>"
            + ", ".join(f"<code>{escape(i)}</code>" for i in dict.fromkeys(failing))
            + "</small></div>"
            if failing
            else ""
        )
        cells.append(
            f'<li class="{word}"><strong>{escape(stage.label)}</strong>'
            f"<div>{_mark(status)}</div>{note}{detail}</li>"
        )
    return '<ol class="chain" aria-label="discovery path">' + "".join(cells) + "</ol>"


def _rows(report: Report) -> str:
    rows = []
    for check in report.checks:
        word = _MARK[check.status][1]
        rows.append(
            f'<tr class="{word}" id="row-{escape(check.id)}">'
            f"<td>{_mark(check.status)}</td>"
            f"<td><code>{escape(check.id)}</code></td>"
            f"<td>{escape(check.target or '')}</td>"
            f"<td>{escape(check.summary)}</td></tr>"
        )
    return (
        "<table><thead><tr><th>status</th><th>check</th><th>target</th>"
        "<th>summary</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _problems(report: Report, docs: Mapping[str, str]) -> str:
    problems = report.problems()
    if not problems:
        return "<p>Nothing to fix.</p>"
    out = []
    shown_docs: set[str] = set()
    for check in problems:
        word = _MARK[check.status][1]
        target = f" <small>{escape(check.target)}</small>" if check.target else ""
        part = (
            f'<section class="problem {word}">'
            f"<h3>{_mark(check.status)} <code>{escape(check.id)}</code>{target}</h3>"
            f"<p>{escape(check.summary)}</p>"
        )
        if check.fix:
            part += '<div class="fix"><strong>Fix:</strong>' + fix_to_html(check.fix)
            part += "</div>"
        entry = docs.get(check.id)
        if entry and check.id not in shown_docs:
            shown_docs.add(check.id)
            part += (
                f'<details class="docs"><summary>About <code>{escape(check.id)}'
                f"</code> (from {escape(check.docs)})</summary>"
                f"{markdown_to_html(entry)}</details>"
            )
        out.append(part + "</section>")
    return "".join(out)


def _refresh_form() -> str:
    # A GET form: the token goes where Synapse's admin API reads it, and only
    # when the admin types it. The page itself never holds it.
    return (
        f'<form method="get" action="{FORM_ACTION}">'
        '<input type="hidden" name="format" value="html">'
        '<input type="hidden" name="refresh" value="true">'
        '<label>Access token of a server admin: <input type="password" '
        'name="access_token" autocomplete="off" required></label> '
        '<button type="submit">Run the checks again</button></form>'
        f'<p class="meta">Or <a href="{FORM_ACTION}?format=html&amp;refresh=true">'
        "refresh without the token</a> if your browser or proxy sends an "
        "<code>Authorization</code> header. The token is never written into this "
        "page: re-enter it to refresh.</p>"
    )


def render_html(report: Report, *, docs: Mapping[str, str] | None = None) -> str:
    """The whole page. `docs`: check id -> its docs/checks.md entry."""
    # Last resort: a lone surrogate would make the page unencodable (a 500),
    # control characters and escape sequences have no place in it either.
    report = cleaned(report)
    generated = time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.generated_at / 1000)
    )
    verdict_class = _VERDICT_CLASS[report.verdict]
    notes = "".join(f'<p class="meta">note: {escape(n)}</p>' for n in report.notes)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(report.verdict.value.upper())}: federation of "
        f"{escape(report.server_name)}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>synapse-fedhealth: <code>{escape(report.server_name)}</code></h1>"
        f'<div class="verdict {verdict_class}" id="verdict">'
        f"{escape(summary_line(report))}</div>"
        f'<p class="meta">verdict <strong>{escape(report.verdict.value)}</strong>, '
        f"federation_ok: {str(report.federation_ok).lower()}. Run at "
        f'<time id="generated">{generated}</time> in {report.duration_ms} ms, '
        f"as seen from {escape(report.vantage)}.</p>"
        f"{notes}"
        f"{_refresh_form()}"
        "<h2>Discovery path</h2>"
        f"{_chain(report)}"
        "<h2>What to fix</h2>"
        f"{_problems(report, docs or {})}"
        "<h2>Every check</h2>"
        f"{_rows(report)}"
        "</body></html>\n"
    )


def render_sign_in(message: str) -> str:
    """The page a browser gets without a valid token: the same form."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>synapse-fedhealth: sign in</title><style>{STYLE}</style></head>"
        f"<body><h1>synapse-fedhealth</h1><p>{escape(message)}</p>"
        f"{_refresh_form()}</body></html>\n"
    )
