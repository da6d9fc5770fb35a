"""The HTML status page (`?format=html`, SPEC 2.2) in a real headless Chromium.

A real Synapse runs the module behind the lab's nginx (its DNS, private CA and
TLS). Its addresses are loopback ones, which its `ip_range_whitelist` allows
(a private federation, as the demo's world is), so the healthy setup is `ok`.
For a healthy setup and a broken one (the well-known is gone and the
proxy no longer forwards federation), Chromium loads the page with the
`access_token` query parameter, as an admin's browser would; the test takes a
screenshot of each (kept in docs/) and asserts, from `--dump-dom`, what the
page shows: the verdict, every check id and each fix. The page's own headers
(self-contained: a strict Content-Security-Policy) are checked on the wire.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.integration.module_lab import ModuleHomeserver, brief
from tests.integration.netlab.fixtures import *  # noqa: F403
from tests.integration.netlab.fixtures import require_root
from tests.integration.netlab.lab import Lab
from tests.integration.netlab.nginx import (
    ProxyVariant,
    Vhost,
    WellKnown,
    well_known_server,
)
from tests.support.synapse_process import http_request

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM_TIMEOUT_S = 60
WINDOW = "1200,1800"
# As Debian's chromium runs here as root, without a display or a network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--hide-scrollbars",
)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (Debian: chromium)")
    return found


def chromium(url: str, *args: str) -> str:
    """Run headless Chromium once on `url` with a fresh profile; its stdout."""
    with tempfile.TemporaryDirectory(prefix="fedhealth-chromium-") as profile:
        done = subprocess.run(
            [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=CHROMIUM_TIMEOUT_S,
            env={**os.environ, "HOME": profile},
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Text(HTMLParser):
    """The text a reader sees (style sheet left out), whitespace collapsed."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = False
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._skip = tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self._skip = False

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())


def visible_text(dom: str) -> _Text:
    parser = _Text()
    parser.feed(dom)
    parser.close()
    return parser


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _plain(text: str) -> str:
    """A fix's first line as the page shows it (code marks are elements)."""
    return " ".join(text.strip().split("\n", 1)[0].replace("`", "").split())


@pytest.fixture
def page_world(tmp_path: Path, lab: Lab) -> Iterator[tuple[Lab, ModuleHomeserver]]:
    require_root()
    _chromium()
    name = lab.server_name("page")
    hs = ModuleHomeserver(
        tmp_path / "hs",
        name,
        lab,
        public_baseurl=f"https://{name}/",
        module={"notary_check": False},
        # A private federation: without it the lab's loopback address would
        # make the healthy page "degraded" (discovery.addresses).
        ip_range_whitelist=[f"{lab.ip('page')}/32"],
    )
    lab.with_zone({name: {"A": lab.ip("page")}})
    try:
        hs.start()
        yield lab, hs
    finally:
        hs.stop()


def _serve(lab: Lab, hs: ModuleHomeserver, *, broken: bool) -> None:
    name = hs.server_name
    lab.with_nginx(
        Vhost(
            address=lab.ip("page"),
            server_names=(name,),
            cert=lab.cert(name),
            well_known_server=None if broken else well_known_server(f"{name}:443"),
            well_known_client=WellKnown(
                {"m.homeserver": {"base_url": f"https://{name}/"}},
                headers={"Access-Control-Allow-Origin": "*"},
            ),
            proxy=ProxyVariant.NOT_FEDERATION if broken else ProxyVariant.CORRECT,
            upstream=hs.upstream,
        )
    )


def _page_url(hs: ModuleHomeserver) -> str:
    return f"{hs.base_url}/_synapse/fedhealth?format=html&access_token={hs.token}"


def _assert_page_shows(dom: str, report: Mapping[str, Any], token: str) -> str:
    parsed = visible_text(dom)
    text = parsed.text
    assert "script" not in parsed.tags
    verdict = report["verdict"]
    assert f"verdict {verdict}" in text, text[:500]
    for check in report["checks"]:
        assert check["id"] in text, check["id"]
        if check["status"] in ("warn", "fail") and check.get("fix"):
            assert _plain(check["fix"]) in text, (check["id"], check["fix"])
    # The token the browser sent is nowhere in what it rendered.
    assert token not in dom
    return text


def test_status_page_in_chromium(
    page_world: tuple[Lab, ModuleHomeserver],
) -> None:
    lab, hs = page_world
    shots: dict[str, Path] = {}
    for state in ("healthy", "broken"):
        _serve(lab, hs, broken=state == "broken")
        report = hs.report()  # a fresh run; the page below serves it from cache
        ids = [c["id"] for c in report["checks"]]
        if state == "healthy":
            problems = [c["id"] for c in report["checks"] if c["status"] == "warn"]
            assert report["verdict"] == "ok", brief(report, ids)
            assert problems == [], brief(report, ids)
        else:
            assert report["verdict"] == "broken", brief(report, ids)

        response = http_request(_page_url(hs), timeout=30)
        assert response.status == 200
        assert _header(response.headers, "Content-Type") == "text/html; charset=utf-8"
        assert _header(response.headers, "Cache-Control") == "no-store"
        csp = _header(response.headers, "Content-Security-Policy") or ""
        assert "default-src 'none'" in csp and "http" not in csp, csp

        dom = chromium(_page_url(hs), "--dump-dom")
        text = _assert_page_shows(dom, report, hs.token)
        if state == "healthy":
            assert "federation OK" in text and "(degraded" not in text
            assert "breaks here" not in text
        else:
            assert "federation BROKEN" in text
            assert "breaks here" in text
            # The docs entry of a failing check, from the installed package.
            failing = [c["id"] for c in report["checks"] if c["status"] == "fail"]
            assert f"About {failing[0]}" in text, text

        shot = DOCS / f"status-page-{state}.png"
        chromium(_page_url(hs), f"--screenshot={shot}", f"--window-size={WINDOW}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shots[state] = shot
    assert len(shots) == 2


def test_browser_without_token_gets_the_sign_in_form(
    page_world: tuple[Lab, ModuleHomeserver],
) -> None:
    _, hs = page_world
    response = http_request(f"{hs.base_url}/_synapse/fedhealth?format=html")
    assert response.status == 401
    assert _header(response.headers, "Content-Type") == "text/html; charset=utf-8"
    dom = chromium(f"{hs.base_url}/_synapse/fedhealth?format=html", "--dump-dom")
    assert re.search(r'<input[^>]*type="password"[^>]*name="access_token"', dom), dom
    # A wrong token: the same form, saying why.
    bad = http_request(
        f"{hs.base_url}/_synapse/fedhealth?format=html&access_token=syt_wrong"
    )
    why = http_request(f"{hs.base_url}/_synapse/fedhealth?access_token=syt_wrong")
    assert why.status == bad.status == 401
    assert why.json()["errcode"] == "M_UNKNOWN_TOKEN"
    assert html.escape(why.json()["error"]) in bad.text
    assert "syt_wrong" not in bad.text
    # JSON clients keep the Matrix error.
    plain = http_request(f"{hs.base_url}/_synapse/fedhealth")
    assert plain.status == 401 and plain.json()["errcode"] == "M_MISSING_TOKEN"
