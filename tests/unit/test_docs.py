"""Docs are part of the feature: every check id has its entry, every config
key its section, and report links point at real anchors."""

from __future__ import annotations

import re
from pathlib import Path

from synapse_fedhealth.check_ids import ALL_CHECK_IDS
from synapse_fedhealth.config import KNOWN_KEYS
from synapse_fedhealth.report import docs_anchor

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _anchors(markdown: str) -> set[str]:
    """GitHub-style heading anchors."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE):
        text = heading.strip().lower()
        text = re.sub(r"[^\w\- ]", "", text)
        anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_check_id_is_documented_with_a_fix() -> None:
    checks_md = (DOCS / "checks.md").read_text()
    anchors = _anchors(checks_md)
    for check_id in ALL_CHECK_IDS:
        assert f"### `{check_id}`" in checks_md, check_id
        assert docs_anchor(check_id).split("#", 1)[1] in anchors, check_id
        section = checks_md.split(f"### `{check_id}`", 1)[1].split("\n### ", 1)[0]
        assert re.search(r"\bfix\b|\bFix\b", section), f"{check_id} has no fix"


def test_proxy_snippets_for_proxy_related_checks() -> None:
    checks_md = (DOCS / "checks.md").read_text()
    for check_id in (
        "config.x_forwarded",
        "federation.signed_request",
        "proxy.forwarded_headers",
    ):
        section = checks_md.split(f"### `{check_id}`", 1)[1].split("\n### ", 1)[0]
        for proxy in ("nginx", "Caddy", "Traefik", "Apache"):
            assert proxy in section, (check_id, proxy)


def test_every_config_key_is_documented() -> None:
    configuration_md = (DOCS / "configuration.md").read_text()
    for key in KNOWN_KEYS:
        assert f"`{key}`" in configuration_md, key


def test_install_routes_are_documented() -> None:
    install_md = (DOCS / "install.md").read_text()
    assert "/opt/venvs/matrix-synapse" in install_md
    assert "FROM matrixdotorg/synapse" in install_md
    assert "pip install" in install_md
