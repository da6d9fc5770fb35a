"""Which proxy answers, from its headers and error pages; its snippet first
in the fix; the report's top-level `proxy`."""

from __future__ import annotations

import pytest

from synapse_fedhealth.checks.client_wellknown import judge_client_well_known
from synapse_fedhealth.checks.forwarded import fix_xff
from synapse_fedhealth.checks.proxy_detect import (
    detect_proxy,
    proxy_fix,
    report_proxy,
)
from synapse_fedhealth.report import Report, ok
from tests.unit.insider_helpers import REQUEST, SERVER_NAME

NGINX_404 = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
APACHE_502 = (
    b"<!DOCTYPE HTML PUBLIC><html><head><title>502 Proxy Error</title></head>"
    b"<body><h1>Proxy Error</h1><hr><address>Apache/2.4.62 (Debian) Server at "
    b"example.com Port 443</address></body></html>"
)


@pytest.mark.parametrize(
    ("headers", "body", "name"),
    [
        ({"server": ("nginx/1.22.1",)}, b"", "nginx"),
        ({"server": ("nginx",)}, b"", "nginx"),
        ({"server": ("openresty",)}, b"", "nginx"),
        ({"server": ("Caddy",)}, b"", "caddy"),
        ({"server": ("Apache/2.4.62 (Debian)",)}, b"", "apache"),
        ({"via": ("1.1 Caddy",)}, b"", "caddy"),
        # Server hidden (`server_tokens off` + headers-more), the page still shows.
        ({}, NGINX_404, "nginx"),
        ({}, APACHE_502, "apache"),
        (
            {"content-type": ("text/plain; charset=utf-8",)},
            b"404 page not found\n",
            "traefik",
        ),
        ({"content-type": ("text/plain; charset=utf-8",)}, b"Bad Gateway", "traefik"),
    ],
)
def test_fingerprints(
    headers: dict[str, tuple[str, ...]], body: bytes, name: str
) -> None:
    guess = detect_proxy(headers, body)
    assert guess is not None and guess.name == name


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"server": ("Synapse/1.163.0",)}, b'{"errcode": "M_UNRECOGNIZED"}'),
        ({}, b""),
        # Synapse's own plain answers are not Traefik's.
        (
            {"server": ("Synapse/1.163.0",), "content-type": ("text/plain",)},
            b"Bad Gateway",
        ),
        ({"server": ("gws",)}, b"<html>404</html>"),
    ],
)
def test_unknown_is_never_guessed(
    headers: dict[str, tuple[str, ...]], body: bytes
) -> None:
    assert detect_proxy(headers, body) is None


def test_detected_proxy_snippet_first_others_behind_the_docs() -> None:
    fix = fix_xff("apache")
    assert fix.startswith("Make the proxy send the client address (Apache, detected)")
    assert "ProxyAddHeaders" in fix
    assert "proxy_set_header" not in fix
    assert (
        "Other proxies (nginx, Caddy, Traefik): docs/checks.md#proxyforwarded_headers"
        in fix
    )


def test_unknown_proxy_lists_all_and_says_so() -> None:
    fix = fix_xff(None)
    assert "(unknown proxy)" in fix
    for snippet in (
        "proxy_set_header",
        "ProxyAddHeaders",
        "reverse_proxy",
        "forwardedHeaders",
    ):
        assert snippet in fix


def test_proxy_fix_single_snippet_has_no_other_link() -> None:
    assert "Other proxies" not in proxy_fix("Do", {"nginx": "x"}, "nginx", "a")


def test_client_well_known_records_proxy_and_orders_the_fix() -> None:
    result = judge_client_well_known(
        200,
        {"content-type": ("application/json",), "server": ("nginx/1.22.1",)},
        b'{"m.homeserver": {"base_url": "https://matrix.example.com/"}}',
        public_baseurl="https://matrix.example.com/",
        server_name=SERVER_NAME,
        request=REQUEST,
        proxy=detect_proxy({"server": ("nginx/1.22.1",)}),
    )
    assert result.details["proxy"] == "nginx"
    assert (result.fix or "").startswith("Add `Access-Control-Allow-Origin: *`")
    assert "(nginx, detected): `add_header Access-Control-Allow-Origin *;`" in (
        result.fix or ""
    )
    assert (
        "Other proxies (Caddy, Apache, Traefik): docs/checks.md#clientwell_known"
        in (result.fix or "")
    )


def test_report_top_level_proxy() -> None:
    seen = ok("federation.version", "fine", details={"proxy": "nginx"})
    other = ok("client.well_known", "fine", details={"proxy": "caddy"})
    plain = ok("tls.handshake", "fine")
    assert report_proxy([seen, seen, other, plain]) == "nginx"
    assert report_proxy([plain]) == "unknown"
    report = Report.build(
        server_name="example.com",
        checks=[seen, plain],
        federation_disabled=False,
        generated_at=0,
        duration_ms=1,
    )
    assert report.to_json()["proxy"] == "nginx"
