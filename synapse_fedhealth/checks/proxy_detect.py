"""Which reverse proxy answers the public path: nginx, Caddy, Traefik or
Apache, from what it sends (`Server`, `Via`, its own error pages). Pure.

Fingerprints, and where each comes from:
- nginx: `Server: nginx[/version]` (it replaces the upstream's Server), and
  its error pages end `<hr><center>nginx[/version]</center>` (seen against
  the lab's real nginx; src/http/ngx_http_special_response.c).
- Apache httpd: `Server: Apache[/version (OS)]`; its error pages carry
  `<address>Apache/... Server at HOST Port N</address>`
  (modules/http/http_protocol.c, `ap_psignature`).
- Caddy: `Server: Caddy` on every response it writes (modules/caddyhttp/
  server.go sets it; not run here); `Via: 1.1 Caddy` when configured.
- Traefik: no Server header of its own; an unmatched router answers Go's
  `404 page not found` (net/http `NotFound`) and a dead backend `Bad Gateway`
  (pkg/proxy: `http.StatusText(502)`), both text/plain (from its source; not
  run here).
Anything else is reported as unknown, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attr

from synapse_fedhealth.checks.http_answer import Headers, content_type, header_value

NGINX = "nginx"
CADDY = "caddy"
TRAEFIK = "traefik"
APACHE = "apache"
UNKNOWN = "unknown"
PROXIES = (NGINX, CADDY, TRAEFIK, APACHE)
DISPLAY = {NGINX: "nginx", CADDY: "Caddy", TRAEFIK: "Traefik", APACHE: "Apache"}

_SERVER_PRODUCTS = (
    (re.compile(r"^\s*(nginx|openresty|angie)\b", re.I), NGINX),
    (re.compile(r"^\s*caddy\b", re.I), CADDY),
    (re.compile(r"^\s*apache\b", re.I), APACHE),
    (re.compile(r"^\s*traefik\b", re.I), TRAEFIK),
)
_VIA_PRODUCTS = (
    (re.compile(r"\bnginx\b", re.I), NGINX),
    (re.compile(r"\bcaddy\b", re.I), CADDY),
    (re.compile(r"\bapache\b", re.I), APACHE),
    (re.compile(r"\btraefik\b", re.I), TRAEFIK),
)
_BODY_MARKS = (
    (re.compile(rb"<center>nginx(/[\d.]+)?</center>", re.I), NGINX),
    (re.compile(rb"<address>Apache(/[^<]*)? Server at ", re.I), APACHE),
)
# Go net/http's own answers, which Traefik sends as they are.
_GO_PLAIN_BODIES = {b"404 page not found", b"Bad Gateway"}
BODY_SCAN_BYTES = 4096  # error pages are short; only their start is read


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ProxyGuess:
    name: str  # one of PROXIES
    evidence: str  # what gave it away, for details

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "evidence": self.evidence}


def detect_proxy(headers: Headers, body: bytes = b"") -> ProxyGuess | None:
    """The proxy this answer shows, or None when nothing identifies one."""
    server = header_value(headers, "server")
    if server:
        for pattern, name in _SERVER_PRODUCTS:
            if pattern.search(server):
                return ProxyGuess(name=name, evidence=f"Server: {server[:80]}")
    via = header_value(headers, "via")
    if via:
        for pattern, name in _VIA_PRODUCTS:
            if pattern.search(via):
                return ProxyGuess(name=name, evidence=f"Via: {via[:80]}")
    start = body[:BODY_SCAN_BYTES]
    for mark, name in _BODY_MARKS:
        found = mark.search(start)
        if found:
            return ProxyGuess(
                name=name,
                evidence="error page "
                + found.group(0).decode("latin-1", "replace")[:80],
            )
    if (
        server is None
        and content_type(headers) == "text/plain"
        and start.strip() in _GO_PLAIN_BODIES
    ):
        return ProxyGuess(
            name=TRAEFIK,
            evidence=f"Go's plain {start.strip().decode()!r} without a Server header",
        )
    return None


def first_guess(answers: Iterable[tuple[Headers, bytes]]) -> ProxyGuess | None:
    for headers, body in answers:
        guess = detect_proxy(headers, body)
        if guess is not None:
            return guess
    return None


def with_proxy(details: Mapping[str, Any], guess: ProxyGuess | None) -> dict[str, Any]:
    """`details` with `proxy` (and its evidence) when one was seen."""
    out = dict(details)
    if guess is not None:
        out["proxy"] = guess.name
        out["proxy_evidence"] = guess.evidence
    return out


def proxy_fix(
    intro: str, snippets: Mapping[str, str], proxy: str | None, anchor: str
) -> str:
    """A fix with the detected proxy's snippet first and the others behind a
    docs link; with none detected, every snippet, saying so."""
    if proxy is not None and proxy in snippets:
        others = [DISPLAY[p] for p in snippets if p != proxy]
        tail = (
            f" Other proxies ({', '.join(others)}): docs/checks.md#{anchor}."
            if others
            else ""
        )
        return f"{intro} ({DISPLAY[proxy]}, detected): {snippets[proxy]}.{tail}"
    listed = "; ".join(f"{DISPLAY[p]} {s}" for p, s in snippets.items())
    return f"{intro} (unknown proxy): {listed}."


def report_proxy(checks: Sequence[Any]) -> str:
    """The report's top-level `proxy`: the name most checks saw, or unknown."""
    seen: dict[str, int] = {}
    for check in checks:
        name = (
            check.details.get("proxy") if isinstance(check.details, Mapping) else None
        )
        if isinstance(name, str) and name in PROXIES:
            seen[name] = seen.get(name, 0) + 1
    if not seen:
        return UNKNOWN
    return max(seen, key=lambda n: seen[n])
