"""The named cause through real nginx, with a real Synapse running the
module and no `public_baseurl` (the setups an admin most often has wrong):

- a federation vhost without forwarded headers: proxy.forwarded_headers is
  judged through the federation path peers use, not skipped;
- a client well-known with `Access-Control-Allow-Origin` twice (`*, *`);
- a client well-known behind a redirect whose hop has no CORS header;
- "forgot public_baseurl": the bare domain serves the well-knowns only, and
  base_url (Synapse's default, the bare domain) is no homeserver;
- the proxy in front is named nginx, and its snippet comes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.module_lab import ModuleHomeserver, find_check
from tests.integration.netlab.fixtures import *  # noqa: F403
from tests.integration.netlab.lab import Lab
from tests.integration.netlab.nginx import (
    ProxyVariant,
    Vhost,
    WellKnown,
    well_known_server,
)
from tests.integration.test_insider import insider_lab  # noqa: F401  (a fixture)

pytestmark = pytest.mark.integration


class BareWorld:
    """A module Synapse without public_baseurl behind nginx on `ip`:443."""

    def __init__(self, lab: Lab, directory: Path) -> None:
        self.lab = lab
        self.name = lab.server_name("bare")
        self.fed = f"fed.{self.name}"
        self.ip = lab.ip("bare")
        self.cert = lab.cert(self.name, self.fed)
        main = ModuleHomeserver(directory / "main", self.name, lab)
        # The lab's base config sets it; this world is about leaving it out.
        main.process.config.pop("public_baseurl", None)
        self.main = main.start()

    def vhost(self, **kwargs: Any) -> Vhost:
        settings: dict[str, Any] = {
            "address": self.ip,
            "server_names": (self.name,),
            "cert": self.cert,
            "well_known_server": well_known_server(f"{self.name}:443"),
            "well_known_client": WellKnown(
                {"m.homeserver": {"base_url": f"https://{self.name}/"}},
                headers={"Access-Control-Allow-Origin": "*"},
            ),
            "upstream": self.main.upstream,
        }
        settings.update(kwargs)
        return Vhost(**settings)

    def report(self, *vhosts: Vhost) -> dict[str, Any]:
        self.lab.with_zone({self.name: {"A": self.ip}, self.fed: {"A": self.ip}})
        self.lab.with_nginx(*vhosts)
        return self.main.report()


@pytest.fixture(scope="module")
def bare(
    tmp_path_factory: pytest.TempPathFactory,
    insider_lab: Lab,  # noqa: F811
) -> Iterator[BareWorld]:
    world = BareWorld(insider_lab, tmp_path_factory.mktemp("bare"))
    try:
        yield world
    finally:
        world.main.stop()


def test_forwarded_headers_through_the_federation_path(bare: BareWorld) -> None:
    report = bare.report(bare.vhost(proxy=ProxyVariant.NO_FORWARDED_HEADERS))
    checks = [c for c in report["checks"] if c["id"] == "proxy.forwarded_headers"]
    assert len(checks) == 1
    check = checks[0]
    assert check["status"] == "warn", check
    assert check["details"]["path"] == "federation", check
    assert check["target"] == f"{bare.ip}:443"
    assert "X-Forwarded-For did not arrive" in check["summary"]
    assert check["details"]["proxy"] == "nginx", check["details"]
    assert "(nginx, detected): `proxy_set_header X-Forwarded-For" in check["fix"]
    assert "docs/checks.md#proxyforwarded_headers" in check["fix"]
    assert report["proxy"] == "nginx"
    # Synapse answers the federation checks through nginx: they saw it too.
    assert find_check(report, "federation.version")["details"]["proxy"] == "nginx"


def test_allow_origin_twice(bare: BareWorld) -> None:
    twice = WellKnown(
        {"m.homeserver": {"base_url": f"https://{bare.name}/"}},
        # Two header lines (names differ only in case): `*, *` to a browser.
        headers={
            "Access-Control-Allow-Origin": "*",
            "access-control-allow-origin": "*",
        },
    )
    report = bare.report(bare.vhost(well_known_client=twice))
    check = find_check(report, "client.well_known")
    assert check["status"] == "warn", check
    assert "sent 2 times" in check["summary"], check
    assert check["details"]["access_control_allow_origin"] == "*, *"


def test_redirect_hop_without_cors(bare: BareWorld) -> None:
    hop = WellKnown(redirect=f"https://{bare.name}/wk-client")
    served = (
        "location = /wk-client {\n"
        "    default_type application/json;\n"
        "    add_header Access-Control-Allow-Origin * always;\n"
        f'    return 200 \'{{"m.homeserver": {{"base_url": "https://{bare.name}/"}}}}\';\n'
        "}\n"
    )
    report = bare.report(bare.vhost(well_known_client=hop, extra=served))
    check = find_check(report, "client.well_known")
    assert check["status"] == "warn", check
    assert (
        f"redirect from https://{bare.name}/.well-known/matrix/client"
        in (check["summary"])
    ), check
    assert check["details"]["redirects"][0]["access_control_allow_origin"] is None


def test_forgot_public_baseurl(bare: BareWorld) -> None:
    # The bare domain serves only the well-knowns and delegates federation to
    # fed.<name>; the client well-known says the bare domain, as Synapse's
    # default public_baseurl does.
    front = bare.vhost(
        proxy=ProxyVariant.NONE,
        well_known_server=well_known_server(f"{bare.fed}:443"),
    )
    fed = bare.vhost(server_names=(bare.fed,), default_server=False)
    report = bare.report(front, fed)
    check = find_check(report, "client.well_known")
    assert check["status"] == "warn", check
    assert "not a homeserver" in check["summary"], check
    assert check["details"]["client_versions"]["http_status"] == 404
    assert "public_baseurl" in check["fix"]
    assert find_check(report, "federation.version")["status"] == "ok"
