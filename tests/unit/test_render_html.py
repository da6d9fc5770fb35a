"""The HTML status page (`?format=html`): self-contained, escaped, complete."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

from synapse_fedhealth.check_docs import check_docs, split_entries
from synapse_fedhealth.check_ids import ALL_CHECK_IDS
from synapse_fedhealth.render.html import (
    CONTENT_SECURITY_POLICY,
    FORM_ACTION,
    fix_to_html,
    markdown_to_html,
    render_html,
    render_sign_in,
)
from synapse_fedhealth.report import Report, fail, ok, skip, warn
from tests.unit.fakes import report_of

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">"\'&'
# What the page itself is made of; anything else came from a string.
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4",
    "div", "p", "code", "pre", "strong", "small", "span", "time", "form",
    "input", "label", "button", "a", "ol", "ul", "li", "section", "details",
    "summary", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.style = ""
        self._in_style = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data
        else:
            self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser


BROKEN = report_of(
    ok("config.server_name", "server_name 'example.com' is a valid public name"),
    ok("discovery.well_known", "/.well-known/matrix/server delegates to m.example.com"),
    skip("discovery.srv", "skipped: the well-known names a port"),
    ok("discovery.targets", "m.example.com:443 -> 203.0.113.7:443"),
    ok("connection.reachable", "connected", target="203.0.113.7:443"),
    fail(
        "tls.certificate",
        "the certificate chain is incomplete: the intermediate is missing",
        fix="Serve the full chain (fullchain.pem), e.g. in nginx:\n"
        "ssl_certificate /etc/letsencrypt/live/m.example.com/fullchain.pem;",
        target="203.0.113.7:443",
    ),
    warn(
        "config.x_forwarded",
        "listeners[0] lacks x_forwarded",
        fix="Set `x_forwarded: true` on this listener",
    ),
)


def test_hostile_strings_cannot_inject_markup() -> None:
    report = Report.build(
        server_name="example.com",
        checks=[
            fail(
                "tls.certificate",
                HOSTILE,
                fix=HOSTILE + "\n" + HOSTILE,
                target=HOSTILE,
                details={"x": HOSTILE},
            ),
            ok("federation.version", HOSTILE),
        ],
        federation_disabled=False,
        generated_at=0,
        duration_ms=1,
        vantage=HOSTILE,
        notes=[HOSTILE],
    )
    page = render_html(report, docs={"tls.certificate": HOSTILE + "\n```\n" + HOSTILE})
    parsed = _parse(page)
    assert {tag for tag, _ in parsed.tags} <= PAGE_TAGS
    assert not any(tag in ("script", "img") for tag, _ in parsed.tags)
    assert not any(name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    # The text is shown, as text.
    assert "<script>alert(1)</script>" in "".join(parsed.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_page_shows_verdict_every_check_and_each_fix() -> None:
    page = render_html(BROKEN, docs={})
    text = "".join(_parse(page).text)
    assert "federation BROKEN: tls.certificate failed" in text
    for check in BROKEN.checks:
        assert f'id="row-{check.id}"' in page
        assert check.summary in text
    assert "Serve the full chain (fullchain.pem)" in text
    assert "Set x_forwarded: true on this listener" in text
    # The snippet after the fix's first line stays code.
    assert (
        "<pre><code>ssl_certificate /etc/letsencrypt/live/m.example.com/"
        "fullchain.pem;</code></pre>" in page
    )
    assert "2025-11-28 00:00:00 UTC" in text  # when it ran
    for mark in ("\u2713 ok", "\u2717 fail", "! warn", "\u2013 skip"):
        assert mark in text


def test_chain_shows_where_discovery_breaks() -> None:
    page = render_html(BROKEN, docs={})
    chain = page.split('<ol class="chain"', 1)[1].split("</ol>", 1)[0]
    stages = re.findall(r'<li class="(\w+)"><strong>([^<]+)</strong>', chain)
    assert stages == [
        ("ok", "server name"),
        ("ok", "well-known"),
        ("skip", "SRV"),
        ("ok", "targets"),
        ("fail", "TLS"),
        ("skip", "endpoints"),
    ]
    assert chain.count("breaks here") == 1
    tls = chain.split("<strong>TLS</strong>", 1)[1].split("</li>", 1)[0]
    assert "breaks here" in tls and "tls.certificate" in tls


def test_healthy_page_has_nothing_to_fix() -> None:
    page = render_html(report_of(ok("federation.version", "Synapse 1.163")), docs={})
    assert "federation OK" in page and "Nothing to fix." in page
    assert "breaks here" not in page


def test_token_is_never_in_the_page() -> None:
    # The page can't know the token, and its refresh paths don't ask for it
    # in a link: the form has a password field the admin fills in.
    for page in (render_html(BROKEN), render_sign_in("Missing access token")):
        parsed = _parse(page)
        links = [a.get("href") or "" for tag, a in parsed.tags if tag == "a"]
        assert links == [f"{FORM_ACTION}?format=html&refresh=true"]
        inputs = {a.get("name"): a for tag, a in parsed.tags if tag == "input"}
        assert inputs["access_token"]["type"] == "password"
        assert "value" not in inputs["access_token"]
        forms = [a for tag, a in parsed.tags if tag == "form"]
        assert forms == [{"method": "get", "action": FORM_ACTION}]


def test_style_is_the_only_thing_the_policy_allows() -> None:
    page = render_html(BROKEN)
    parsed = _parse(page)
    digest = base64.b64encode(hashlib.sha256(parsed.style.encode()).digest())
    assert f"style-src 'sha256-{digest.decode()}'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY  # none, by default-src
    # No external asset: nothing loads from a URL.
    assert not any(
        name in ("src", "srcset") or (tag == "link")
        for tag, attrs in parsed.tags
        for name in attrs
    )
    assert "http://" not in page and "https://" not in page


def test_failing_checks_show_their_docs_entry_from_package_data() -> None:
    docs = check_docs()
    assert set(ALL_CHECK_IDS) <= set(docs)
    page = render_html(BROKEN, docs=docs)
    first_sentence = " ".join(docs["tls.certificate"].split(".", 1)[0].split())
    assert first_sentence.replace("`", "") in "".join(_parse(page).text)
    assert "About <code>tls.certificate</code>" in page
    assert "About <code>config.x_forwarded</code>" in page
    # Only problems carry an entry.
    assert "About <code>config.server_name</code>" not in page


def test_split_entries_stops_at_the_next_heading() -> None:
    entries = split_entries(
        "# Checks\n\n### `a.b`\n\nAbout a.\n\n### `c.d`\n\nAbout c.\n\n## Next\n\nx"
    )
    assert entries == {"a.b": "About a.", "c.d": "About c."}


def test_markdown_subset() -> None:
    out = markdown_to_html(
        "Fix: set `x`:\n\n```yaml\nlisteners:\n  - port: 8008\n```\n\n- one\n  more\n- two"
    )
    assert "<p>Fix: set <code>x</code>:</p>" in out
    assert "<pre><code>listeners:\n  - port: 8008</code></pre>" in out
    assert "<ul><li>one more</li><li>two</li></ul>" in out
    assert fix_to_html("one line") == "<p>one line</p>"


def test_hostile_remote_text_leaves_the_page_encodable() -> None:
    """A lone surrogate made the page unencodable: a 500 from the endpoint."""
    from synapse_fedhealth.report import warn as warn_result

    hostile = Report.build(
        server_name="example.com",
        checks=[
            warn_result(
                "federation.version",
                "Synapse \ud800 \x1b[31mred\x1b[0m\nforged line",
                fix="f",
                target="203.0.113.7:8448",
            )
        ],
        federation_disabled=False,
        generated_at=0,
        duration_ms=0,
    )
    page = render_html(hostile, docs={})
    page.encode("utf-8")
    assert "\x1b" not in page
    assert "forged line" in page
