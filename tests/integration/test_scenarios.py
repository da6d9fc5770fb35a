"""End-to-end federation scenarios (SPEC 2.2, 2.5, 3, 4.2-4.4).

Each scenario sets up the lab (the fake zone's DNS, nginx in front of a real
Synapse that runs the module, certificates from the lab's CA, closed and
filtered ports) and then asks, with the same setup:

1. the module, through the real admin endpoint `GET /_synapse/fedhealth?refresh=true`
   of that Synapse: the verdict, and the exact check id + status +
   `details.reason` (or summary fragment) that explains it;
2. the `check` command line (a subprocess, `--dns-server` = the lab's DNS,
   `--ca-file` = the lab's CA): the same verdict;
3. for a representative subset, a second real Synapse (`PeerSynapse`,
   resolving through the lab's DNS and trusting the lab's CA): it must
   federate exactly where we say ok/degraded and fail where we say broken.

One module-Synapse per server name serves every scenario of that name: a
scenario changes DNS and nginx and forces a fresh run with `?refresh=true`.

Every address is on loopback (127.x), `::1`, or inside the lab's network
namespace. Lab addresses are loopback, so `discovery.addresses` always warns
("loopback, private or CGNAT space"): a working setup is `degraded`, not
`ok`, in this lab, and the tests expect exactly that (see LOOPBACK_WARNING).

With FEDHEALTH_SCENARIO_ROWS=<file> in the environment the results (verdicts,
the deciding check, timings) are written there as JSON when the module's
tests end; `benchmarks/scenario_table.py` turns them into
`benchmarks/results/scenarios.md`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attr
import pytest

from tests.integration.conftest import logcontext_errors, tracebacks_from_us
from tests.integration.netlab.certs import CertFiles, CertVariant, Pki
from tests.integration.netlab.dns_server import DnsServer, ZoneSpec, srv
from tests.integration.netlab.fixtures import *  # noqa: F403
from tests.integration.netlab.fixtures import require_root, skip_without_netns
from tests.integration.netlab.lab import Lab
from tests.integration.netlab.nginx import (
    ProxyVariant,
    Vhost,
    WellKnown,
    nginx_available,
    well_known_server,
)
from tests.integration.netlab.peer import (
    SHARED_SECRET,
    PeerSynapse,
    base_config,
    clean_env,
)
from tests.support.synapse_process import (
    SynapseProcess,
    free_port,
    http_request,
    register_user,
)

pytestmark = pytest.mark.integration

MODULE = "synapse_fedhealth.FedHealthModule"
TIMEOUT_S = 5.0  # the module's `timeout` and the CLI's `--timeout`
ENDPOINT = "/_synapse/fedhealth"
# A whole run may overrun its budget by a little (the report is built after
# the deadline); the admin request and the CLI get generous bounds on top.
RUN_OVERRUN_S = 0.5
ENDPOINT_TIMEOUT_S = TIMEOUT_S + 30.0
CLI_TIMEOUT_S = TIMEOUT_S + 30.0
CLI_STARTUP_BUDGET_S = 5.0  # interpreter + Twisted import on a slow machine
PEER_TIMEOUT_S = 60.0
ROWS_ENV = "FEDHEALTH_SCENARIO_ROWS"
DEBUG_ENV = "FEDHEALTH_SCENARIO_DEBUG"
# Checks the command line skips (it has no config and no key).
INSIDER_PREFIXES = (
    "config.",
    "federation.key_matches_local",
    "federation.signed_request",
    "federation.notary",
    "proxy.",
    "client.",
)

# The one warning a working setup has in this lab: every address is loopback.
LOOPBACK_WARNING = ("discovery.addresses", "warn", None, "loopback, private or CGNAT")

# -- the world: one lab, one module-Synapse per server name ---------------------


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Expect:
    """A check the report must contain: `check` with `status`, and (when
    given) `details.reason == reason` and `summary` containing `fragment`."""

    check: str
    status: str
    reason: str | None = None
    fragment: str | None = None
    target: str | None = None  # "ip:port", or a placeholder such as "{fed443}"

    def describe(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.check} {self.status}{reason}"


class ModuleSynapse:
    """A real Synapse with the module, on 127.0.0.1, behind the lab's nginx."""

    def __init__(
        self,
        directory: Path,
        server_name: str,
        lab: Lab,
        *,
        resources: tuple[str, ...] = ("client", "federation"),
    ) -> None:
        self.server_name = server_name
        self.port = free_port()
        config = base_config(
            server_name, self.port, x_forwarded=True, resources=resources
        )
        config["modules"] = [
            {
                "module": MODULE,
                "config": lab.module_config(
                    timeout=f"{TIMEOUT_S:g}s",
                    startup_check=False,
                    interval=0,
                    cache_ttl="60s",
                    notary_check=True,  # no trusted_key_servers: skip
                ),
            }
        ]
        self.process = SynapseProcess(directory, config, env=clean_env())
        self.token = ""

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ModuleSynapse:
        self.process.start()
        self.token = register_user(
            self.process.base_url,
            SHARED_SECRET,
            f"admin-{secrets.token_hex(3)}",
            secrets.token_urlsafe(12),
            True,
        )
        return self

    def stop(self) -> None:
        self.process.stop()

    def report(self) -> dict[str, Any]:
        response = http_request(
            f"{self.process.base_url}{ENDPOINT}?refresh=true",
            token=self.token,
            timeout=ENDPOINT_TIMEOUT_S,
        )
        assert response.status == 200, response.text
        report: dict[str, Any] = response.json()
        return report


class World:
    """The lab plus the names and addresses the scenarios use.

    `name` is the module-Synapse's server name. Its well-known is served by
    nginx on `ip_front:443` (a valid certificate for `name`). Federation
    traffic goes to `fed` (= fed.<name>) on `ip_fed`, whose vhost the
    scenarios vary (certificate, proxy, port); its certificate covers both
    `fed` and `name` (SRV and port-8448 fallbacks send SNI `name`).
    """

    def __init__(self, lab: Lab, directory: Path) -> None:
        self.lab = lab
        self.directory = directory
        self.name = lab.server_name("scenario")
        self.fed = f"fed.{self.name}"
        self.ip_front = lab.ip("front")
        self.ip_fed = lab.ip("fed")
        self._certs: dict[tuple[tuple[str, ...], CertVariant], CertFiles] = {}
        self.main = ModuleSynapse(directory / "main", self.name, lab)
        self.main.start()
        self._no_federation: ModuleSynapse | None = None
        self.peer_well_known: str | None = None  # what the peer may have cached
        self.rows: list[dict[str, Any]] = []

    @property
    def no_federation(self) -> ModuleSynapse:
        """A second module-Synapse whose only listener lacks `federation`."""
        if self._no_federation is None:
            name = self.lab.server_name("nofed")
            synapse = ModuleSynapse(
                self.directory / "nofed", name, self.lab, resources=("client",)
            )
            self._no_federation = synapse.start()
        return self._no_federation

    @property
    def synapses(self) -> list[ModuleSynapse]:
        return [s for s in (self.main, self._no_federation) if s is not None]

    def close(self) -> None:
        for synapse in (self.main, self._no_federation):
            if synapse is not None:
                synapse.stop()

    # -- building blocks -----------------------------------------------------

    def cert(self, *names: str, variant: CertVariant = CertVariant.VALID) -> CertFiles:
        key = (names, variant)
        if key not in self._certs:
            self._certs[key] = self.lab.cert(*names, variant=variant)
        return self._certs[key]

    def front(
        self,
        well_known: WellKnown | None,
        *,
        name: str | None = None,
        ip: str | None = None,
        upstream: str | None = None,
        port: int = 443,
        proxy: ProxyVariant = ProxyVariant.CORRECT,
        variant: CertVariant = CertVariant.VALID,
    ) -> Vhost:
        """The server name's own vhost (public_baseurl points here): the
        well-knowns, and the client API proxied to Synapse."""
        server_name = name or self.name
        return Vhost(
            address=ip or self.ip_front,
            port=port,
            server_names=(server_name,),
            cert=self.cert(server_name, variant=variant),
            well_known_server=well_known,
            well_known_client=WellKnown(
                {"m.homeserver": {"base_url": f"https://{server_name}/"}},
                headers={"Access-Control-Allow-Origin": "*"},
            ),
            proxy=proxy,
            upstream=upstream or self.main.upstream,
        )

    def federation(
        self,
        *,
        variant: CertVariant = CertVariant.VALID,
        proxy: ProxyVariant = ProxyVariant.CORRECT,
        port: int = 443,
    ) -> Vhost:
        """The federation host's vhost on `ip_fed`."""
        return Vhost(
            address=self.ip_fed,
            port=port,
            server_names=(self.fed, self.name),
            cert=self.cert(self.fed, self.name, variant=variant),
            proxy=proxy,
            upstream=self.main.upstream,
        )

    def delegate(self, m_server: str | None = None) -> WellKnown:
        return well_known_server(m_server or f"{self.fed}:443")

    def zone(self, **extra: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        """The server name and the federation host resolve; plus `extra`
        (keyword names are relative: `_matrix-fed._tcp.fed` etc., see rel())."""
        zone: dict[str, Mapping[str, Any]] = {
            self.name: {"A": self.ip_front},
            self.fed: {"A": self.ip_fed},
        }
        zone.update(extra)
        return zone

    def rel(self, label: str) -> str:
        """`label` under the server name (`rel("host")` -> host.<name>)."""
        return f"{label}.{self.name}"

    def apply(self, zone: ZoneSpec, *vhosts: Vhost) -> None:
        self.lab.with_zone(zone)
        self.lab.with_nginx(*vhosts)


# -- the scenarios ---------------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Scenario:
    id: str
    title: str
    setup: Callable[[World], None]
    verdict: str
    expect: tuple[Expect, ...]
    # Only these checks may be warn/fail (besides those in `expect`); None:
    # don't restrict. Used where the verdict must be explained exactly.
    allowed_problems: tuple[str, ...] | None = None
    cli_verdict: str | None = None  # default: `verdict`
    peer: bool | None = None  # must the peer federate? None: not asked
    synapse: str = "main"  # or "no_federation"
    timed: bool = False  # record the wall time of the run in the table
    uses_budget: bool = False  # a probe hangs: the run must last ~`timeout`
    known_bug: str | None = None  # xfail (not strict) with this reason


def _healthy(w: World) -> None:
    w.apply(w.zone(), w.front(w.delegate()), w.federation())


def _wk_404_srv(w: World) -> None:
    w.apply(
        w.zone(**{f"_matrix-fed._tcp.{w.name}": {"SRV": srv(10, 0, 443, w.fed)}}),
        w.front(None),
        w.federation(),
    )


def _wk_404_port_8448(w: World) -> None:
    w.apply(w.zone(), w.front(None), w.front(None, port=8448))


def _wk_tls_expired(w: World) -> None:
    w.apply(
        w.zone(),
        w.front(w.delegate(), variant=CertVariant.EXPIRED),
        w.federation(),
    )


def _wk_text_plain(w: World) -> None:
    w.apply(
        w.zone(),
        w.front(well_known_server(f"{w.fed}:443", content_type="text/plain")),
        w.federation(),
    )


def _wk_404_nothing(w: World) -> None:
    w.apply(w.zone(), w.front(None), w.federation())


def _wk_bad_json(w: World) -> None:
    w.apply(w.zone(), w.front(WellKnown('{"m.server": "fed.')), w.federation())


def _wk_bad_m_server(w: World) -> None:
    w.apply(w.zone(), w.front(w.delegate(f"https://{w.fed}/")), w.federation())


def _wk_closed_port(w: World) -> None:
    w.apply(w.zone(), w.front(w.delegate(f"{w.fed}:8449")), w.federation())


def _wk_unresolvable(w: World) -> None:
    w.apply(w.zone(), w.front(w.delegate(f"{w.rel('gone')}:443")), w.federation())


def _srv_zone(w: World, **records: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    zone = w.zone(**records)
    zone[w.rel("host")] = {"A": w.ip_fed}
    return zone


def _srv_fed(w: World) -> None:
    w.apply(
        _srv_zone(
            w, **{f"_matrix-fed._tcp.{w.fed}": {"SRV": srv(10, 0, 443, w.rel("host"))}}
        ),
        w.front(w.delegate(w.fed)),
        w.federation(),
    )


def _srv_legacy(w: World) -> None:
    w.apply(
        _srv_zone(
            w, **{f"_matrix._tcp.{w.fed}": {"SRV": srv(10, 0, 443, w.rel("host"))}}
        ),
        w.front(w.delegate(w.fed)),
        w.federation(),
    )


def _srv_cname(w: World) -> None:
    zone = _srv_zone(
        w, **{f"_matrix-fed._tcp.{w.fed}": {"SRV": srv(10, 0, 443, w.rel("alias"))}}
    )
    zone[w.rel("alias")] = {"CNAME": w.rel("host")}
    w.apply(zone, w.front(w.delegate(w.fed)), w.federation())


def _srv_servfail(w: World) -> None:
    w.apply(
        _srv_zone(w, **{f"_matrix-fed._tcp.{w.fed}": {"behaviour": "servfail"}}),
        w.front(w.delegate(w.fed)),
        w.federation(),
    )


def _cert(variant: CertVariant) -> Callable[[World], None]:
    def setup(w: World) -> None:
        w.apply(w.zone(), w.front(w.delegate()), w.federation(variant=variant))

    return setup


def _filtered(w: World) -> None:
    skip_without_netns()
    ip = w.lab.filtered(8448)
    zone = w.zone()
    zone[w.rel("filtered")] = {"A": ip}
    w.apply(zone, w.front(w.delegate(f"{w.rel('filtered')}:8448")), w.federation())


def _proxy(variant: ProxyVariant) -> Callable[[World], None]:
    def setup(w: World) -> None:
        w.apply(w.zone(), w.front(w.delegate()), w.federation(proxy=variant))

    return setup


def _front_proxy(variant: ProxyVariant) -> Callable[[World], None]:
    def setup(w: World) -> None:
        w.apply(w.zone(), w.front(w.delegate(), proxy=variant), w.federation())

    return setup


def _dead_aaaa(w: World) -> None:
    zone = w.zone()
    zone[w.fed] = {"A": w.ip_fed, "AAAA": "::1"}  # nothing listens on [::1]:443
    w.apply(zone, w.front(w.delegate()), w.federation())


def _no_federation_listener(w: World) -> None:
    synapse = w.no_federation
    name = synapse.server_name
    ip = w.lab.ip("nofed")
    w.apply(
        {name: {"A": ip}},
        w.front(
            well_known_server(f"{name}:443"),
            name=name,
            ip=ip,
            upstream=synapse.upstream,
        ),
    )


# The certificate variants the peer is asked about too.
PEER_CERT_VARIANTS = (
    CertVariant.EXPIRED,
    CertVariant.WRONG_NAME,
    CertVariant.MISSING_INTERMEDIATE,
)


def _cert_fail(variant: CertVariant, reason: str, fragment: str) -> Scenario:
    return Scenario(
        id=f"cert_{variant.value}",
        title=f"certificate on the federation host: {variant.value.replace('_', ' ')}",
        setup=_cert(variant),
        verdict="broken",
        expect=(
            Expect("discovery.well_known", "ok"),
            Expect("tls.certificate", "fail", reason, fragment, target="{fed443}"),
        ),
        peer=False
        if variant in (CertVariant.EXPIRED, CertVariant.WRONG_NAME)
        else None,
    )


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        id="healthy",
        title="well-known delegates to fed:443, valid certificate, correct proxy",
        setup=_healthy,
        verdict="degraded",
        expect=(
            Expect("discovery.well_known", "ok", fragment="delegates to"),
            Expect("connection.reachable", "ok", target="{fed443}"),
            Expect("tls.certificate", "ok", target="{fed443}"),
            Expect("federation.version", "ok", target="{fed443}"),
            Expect("federation.keys", "ok", target="{fed443}"),
            Expect("federation.key_matches_local", "ok", target="{fed443}"),
            Expect("federation.signed_request", "ok", target="{fed443}"),
            Expect("proxy.forwarded_headers", "ok"),
            Expect("client.well_known", "ok"),
            Expect(*LOOPBACK_WARNING),
        ),
        allowed_problems=("discovery.addresses",),
        peer=True,
        timed=True,
    ),
    Scenario(
        id="wk_404_srv",
        title="no well-known (404), _matrix-fed._tcp SRV to fed:443 works",
        setup=_wk_404_srv,
        verdict="degraded",
        expect=(
            Expect("discovery.well_known", "ok", fragment="none (HTTP 404)"),
            Expect("discovery.srv", "ok", fragment="_matrix-fed._tcp"),
            Expect("federation.version", "ok", target="{fed443}"),
            Expect(*LOOPBACK_WARNING),
        ),
        allowed_problems=("discovery.addresses",),
        peer=True,
    ),
    Scenario(
        id="wk_404_8448",
        title="no well-known (404), no SRV, port 8448 of the server name works",
        setup=_wk_404_port_8448,
        verdict="degraded",
        expect=(
            Expect("discovery.well_known", "ok", fragment="none (HTTP 404)"),
            Expect("discovery.srv", "ok", fragment="no SRV records"),
            Expect("federation.version", "ok", target="{front8448}"),
            Expect(*LOOPBACK_WARNING),
        ),
        allowed_problems=("discovery.addresses",),
    ),
    Scenario(
        id="wk_404_nothing",
        title="no well-known (404), no SRV, nothing on port 8448",
        setup=_wk_404_nothing,
        verdict="broken",
        expect=(
            Expect("discovery.well_known", "fail", fragment="none (HTTP 404)"),
            Expect("connection.reachable", "fail", "refused", target="{front8448}"),
        ),
        peer=False,
    ),
    Scenario(
        id="wk_bad_json",
        title="well-known is not JSON",
        setup=_wk_bad_json,
        verdict="broken",
        expect=(Expect("discovery.well_known", "fail", "invalid", "not valid JSON"),),
        peer=False,
    ),
    Scenario(
        id="wk_bad_m_server",
        title='well-known "m.server" is a URL, not a server name',
        setup=_wk_bad_m_server,
        verdict="broken",
        expect=(
            Expect(
                "discovery.well_known",
                "fail",
                "invalid",
                '"m.server" is not a valid server name',
            ),
        ),
    ),
    Scenario(
        id="wk_closed_port",
        title="well-known delegates to fed:8449, where nothing listens (refused)",
        setup=_wk_closed_port,
        verdict="broken",
        expect=(
            Expect("discovery.well_known", "ok", fragment=":8449"),
            Expect("connection.reachable", "fail", "refused", target="{fed8449}"),
        ),
        peer=False,
    ),
    Scenario(
        id="wk_tls_expired",
        title="the well-known host serves an expired certificate",
        setup=_wk_tls_expired,
        verdict="broken",
        expect=(
            Expect(
                "discovery.well_known",
                "fail",
                "expired",
                "peers silently ignore the delegation",
            ),
        ),
        peer=False,
    ),
    Scenario(
        id="wk_text_plain",
        title="the well-known is served as text/plain",
        setup=_wk_text_plain,
        verdict="degraded",
        expect=(
            Expect(
                "discovery.well_known", "warn", fragment="instead of application/json"
            ),
            Expect("federation.version", "ok", target="{fed443}"),
        ),
        allowed_problems=("discovery.addresses", "discovery.well_known"),
        peer=True,
    ),
    Scenario(
        id="wk_unresolvable",
        title="well-known delegates to a host without A/AAAA (NXDOMAIN)",
        setup=_wk_unresolvable,
        verdict="broken",
        expect=(
            Expect("discovery.well_known", "ok"),
            Expect("discovery.addresses", "fail", "no_address", "gone."),
        ),
    ),
    Scenario(
        id="srv_fed",
        title="well-known delegates to fed (no port); _matrix-fed._tcp.fed -> host:443",
        setup=_srv_fed,
        verdict="degraded",
        expect=(
            Expect("discovery.srv", "ok", fragment="_matrix-fed._tcp.fed."),
            Expect("federation.version", "ok", target="{fed443}"),
            Expect(*LOOPBACK_WARNING),
        ),
        allowed_problems=("discovery.addresses",),
    ),
    Scenario(
        id="srv_legacy",
        title="only the deprecated _matrix._tcp record",
        setup=_srv_legacy,
        verdict="degraded",
        expect=(
            Expect("discovery.srv", "warn", fragment="deprecated _matrix._tcp"),
            Expect("federation.version", "ok", target="{fed443}"),
        ),
        allowed_problems=("discovery.addresses", "discovery.srv"),
        peer=True,
    ),
    Scenario(
        id="srv_cname",
        title="the SRV target is a CNAME",
        setup=_srv_cname,
        verdict="degraded",
        expect=(
            Expect("discovery.srv", "warn", "cname_target", "CNAME"),
            Expect("federation.version", "ok", target="{fed443}"),
        ),
        allowed_problems=("discovery.addresses", "discovery.srv"),
        peer=True,
    ),
    Scenario(
        id="srv_servfail",
        title="the SRV lookup answers SERVFAIL (Synapse does not fall back)",
        setup=_srv_servfail,
        verdict="broken",
        expect=(
            Expect("discovery.srv", "fail", "servfail", "does not fall back"),
            Expect("discovery.addresses", "fail", "srv_failed"),
        ),
        peer=False,
    ),
    _cert_fail(CertVariant.EXPIRED, "expired", "expired"),
    _cert_fail(CertVariant.NOT_YET_VALID, "not_yet_valid", "not_yet_valid"),
    _cert_fail(CertVariant.WRONG_NAME, "name_mismatch", "name_mismatch"),
    _cert_fail(CertVariant.SELF_SIGNED, "self_signed", "self_signed"),
    _cert_fail(CertVariant.UNTRUSTED_CA, "untrusted_issuer", "untrusted_issuer"),
    # The lab's intermediate publishes no AIA URL (trustme can't add one), so
    # nothing tells it from a private CA: untrusted, and the summary says
    # why. tests/integration/test_diagnosis.py serves leaf-only chains from a
    # CA with AIA, where the missing intermediate is named.
    _cert_fail(CertVariant.MISSING_INTERMEDIATE, "untrusted_issuer", "no AIA URL"),
    Scenario(
        id="cert_expiring_soon",
        title="certificate expires in 3 days (warning window 14 days)",
        setup=_cert(CertVariant.EXPIRING_SOON),
        verdict="degraded",
        expect=(
            Expect("tls.certificate", "warn", fragment="expires in", target="{fed443}"),
        ),
        allowed_problems=("discovery.addresses", "tls.certificate"),
    ),
    Scenario(
        id="port_filtered",
        title="well-known delegates to a filtered port (netns nftables drop)",
        setup=_filtered,
        verdict="broken",
        expect=(Expect("connection.reachable", "fail", "timeout", "timed out"),),
        timed=True,
        uses_budget=True,
    ),
    Scenario(
        id="upstream_down",
        title="nginx proxies to an upstream that is down (502)",
        setup=_proxy(ProxyVariant.UPSTREAM_DOWN),
        verdict="broken",
        expect=(
            Expect("tls.certificate", "ok", target="{fed443}"),
            Expect(
                "federation.version",
                "fail",
                "http_status",
                "upstream (Synapse) is down",
                target="{fed443}",
            ),
        ),
        peer=False,
    ),
    Scenario(
        id="no_federation_listener",
        title="nginx routes to a Synapse whose listener lacks `federation` (404)",
        setup=_no_federation_listener,
        verdict="broken",
        expect=(
            Expect("federation.version", "fail", "http_status", "HTTP 404"),
            Expect("config.federation_listener", "fail"),
            Expect("federation.signed_request", "fail", "not_served"),
        ),
        synapse="no_federation",
    ),
    Scenario(
        id="uri_rewrite",
        title="the federation proxy rewrites the URI (`proxy_pass http://up/_matrix/;`)",
        setup=_proxy(ProxyVariant.URI_REWRITE),
        verdict="broken",
        cli_verdict="degraded",  # an outsider can't sign requests: it can't see this
        expect=(
            Expect("federation.version", "ok", target="{fed443}"),
            Expect(
                "federation.signed_request",
                "fail",
                "uri_rewritten",
                target="{fed443}",
            ),
        ),
    ),
    Scenario(
        id="no_forwarded_headers",
        title="the client-API proxy sends no X-Forwarded-* headers",
        setup=_front_proxy(ProxyVariant.NO_FORWARDED_HEADERS),
        verdict="degraded",
        expect=(
            Expect(
                "proxy.forwarded_headers",
                "warn",
                fragment="X-Forwarded-For did not arrive",
            ),
        ),
        allowed_problems=("discovery.addresses", "proxy.forwarded_headers"),
    ),
    Scenario(
        id="dead_aaaa",
        title="fed has a working A and a dead AAAA (::1, port closed)",
        setup=_dead_aaaa,
        verdict="degraded",
        expect=(
            Expect("connection.reachable", "ok", target="{fed443}"),
            Expect("connection.reachable", "warn", "refused", target="[::1]:443"),
            Expect("federation.version", "ok", target="{fed443}"),
        ),
        allowed_problems=("discovery.addresses", "connection.reachable"),
        peer=True,
    ),
)


# -- running one scenario ----------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CliRun:
    exit_code: int
    report: dict[str, Any]
    wall_s: float
    stderr: str


def _start_cli(w: World, name: str) -> tuple[subprocess.Popen[bytes], float]:
    command = [
        sys.executable, "-m", "synapse_fedhealth", "check", name, "--json",
        "--timeout", f"{TIMEOUT_S:g}",
        "--ca-file", str(w.lab.ca_file),
        "--dns-server", w.lab.dns.address,
    ]  # fmt: skip
    began = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    return process, began


def _finish_cli(process: subprocess.Popen[bytes], began: float) -> CliRun:
    try:
        out, err = process.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(
            f"the check command did not end within {CLI_TIMEOUT_S} s"
        ) from None
    wall = time.monotonic() - began
    stderr = err.decode(errors="replace")
    try:
        report = json.loads(out)
    except ValueError:
        raise AssertionError(
            f"the check command printed no JSON (exit {process.returncode}):\n"
            f"{out.decode(errors='replace')}\n{stderr}"
        ) from None
    return CliRun(process.returncode, report, wall, stderr)


def _resolve_target(w: World, target: str | None) -> str | None:
    if target is None:
        return None
    return target.format(
        fed443=f"{w.ip_fed}:443",
        fed8449=f"{w.ip_fed}:8449",
        front8448=f"{w.ip_front}:8448",
    )


def _matches(check: Mapping[str, Any], e: Expect, target: str | None) -> bool:
    details = check.get("details") or {}
    return (
        check.get("id") == e.check
        and check.get("status") == e.status
        and (e.reason is None or details.get("reason") == e.reason)
        and (e.fragment is None or e.fragment in str(check.get("summary")))
        and (target is None or check.get("target") == target)
    )


def _brief(report: Mapping[str, Any]) -> str:
    """The non-ok checks of a report, one per line, for assertion messages
    (every check with FEDHEALTH_SCENARIO_DEBUG=1)."""
    everything = bool(os.environ.get(DEBUG_ENV))
    lines = [f"verdict={report.get('verdict')} duration_ms={report.get('duration_ms')}"]
    for check in report.get("checks", []):
        if everything or check.get("status") in ("warn", "fail"):
            lines.append(
                f"  {check.get('id')} {check.get('status')} target={check.get('target')} "
                f"reason={(check.get('details') or {}).get('reason')}: {check.get('summary')}"
            )
    return "\n".join(lines)


def _problems(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in report.get("checks", []) if c.get("status") in ("warn", "fail")]


def _deciding(report: Mapping[str, Any], expect: Sequence[Expect]) -> str:
    """The checks that explain the verdict, for the table: the expected
    non-ok checks as found, else the failing (or warning) ones."""
    found: list[str] = []
    for e in expect:
        if e.status in ("fail", "warn"):
            for check in report.get("checks", []):
                if check.get("id") == e.check and check.get("status") == e.status:
                    found.append(_describe(check))
                    break
    if not found:
        problems = _problems(report)
        worst = [c for c in problems if c.get("status") == "fail"] or problems
        found = [_describe(c) for c in worst[:2]]
    return "; ".join(dict.fromkeys(found)) or "-"


def _describe(check: Mapping[str, Any]) -> str:
    reason = (check.get("details") or {}).get("reason")
    text = f"{check.get('id')} {check.get('status')}"
    if reason:
        text += f" ({reason})"
    return text


def _peer_check(w: World, peer: PeerSynapse) -> tuple[bool, str]:
    """Ask the peer. It must judge afresh: it is reset first when it holds
    keys of the name (`can_federate_with` would count them) or may have
    cached another well-known (Synapse keeps well-known results, even
    failures, in memory)."""
    # What the server name's :443 serves: the well-known, and the
    # certificate it is fetched over (a TLS failure is cached as "none").
    well_known = repr(
        [
            (v.well_known_server, v.cert.served_chain if v.cert else None)
            for v in w.lab.nginx.vhosts
            if (v.address, v.port) == (w.ip_front, 443)
        ]
    )
    if peer.cached_keys(w.name) or (
        w.peer_well_known is not None and w.peer_well_known != well_known
    ):
        peer.reset()
        assert not peer.cached_keys(w.name)
    w.peer_well_known = well_known
    return peer.can_federate_with(w.name, timeout=PEER_TIMEOUT_S)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Observed:
    """What the module, the command line and the peer made of one setup."""

    server_name: str
    report: dict[str, Any]
    endpoint_wall_s: float
    cli: CliRun
    peer: tuple[bool, str] | None


def _observe(w: World, scenario: Scenario, peer: PeerSynapse | None) -> Observed:
    synapse = w.no_federation if scenario.synapse == "no_federation" else w.main
    scenario.setup(w)
    # The command line runs while the module does: the two are independent.
    cli_process, cli_began = _start_cli(w, synapse.server_name)
    began = time.monotonic()
    try:
        report = synapse.report()
    finally:
        endpoint_wall = time.monotonic() - began
        cli = _finish_cli(cli_process, cli_began)
    peer_result = None
    if scenario.peer is not None and peer is not None:
        peer_result = _peer_check(w, peer)
    return Observed(synapse.server_name, report, endpoint_wall, cli, peer_result)


def _row(scenario: Scenario, o: Observed) -> dict[str, Any]:
    """One line of the scenario table (benchmarks/scenario_table.py)."""
    return {
        "id": scenario.id,
        "title": scenario.title,
        "expected_verdict": scenario.verdict,
        "expected_cli_verdict": scenario.cli_verdict or scenario.verdict,
        "expected": [e.describe() for e in scenario.expect if e.status != "ok"],
        "verdict": o.report.get("verdict"),
        "deciding": _deciding(o.report, scenario.expect),
        "problems": [_describe(c) for c in _problems(o.report)],
        "cli_verdict": o.cli.report.get("verdict"),
        "cli_exit": o.cli.exit_code,
        "cli_deciding": _deciding(o.cli.report, scenario.expect),
        "peer_expected": scenario.peer,
        "peer": None if o.peer is None else o.peer[0],
        "peer_detail": None if o.peer is None else o.peer[1][:300],
        "duration_ms": o.report.get("duration_ms"),
        "cli_duration_ms": o.cli.report.get("duration_ms"),
        "endpoint_wall_s": round(o.endpoint_wall_s, 2),
        "cli_wall_s": round(o.cli.wall_s, 2),
        "timed": scenario.timed,
        "timeout_s": TIMEOUT_S,
        "known_bug": scenario.known_bug,
    }


def _assert_scenario(w: World, scenario: Scenario, o: Observed) -> None:
    report, cli = o.report, o.cli
    brief = _brief(report)

    # The admin endpoint: the verdict, and the checks that explain it.
    assert report["server_name"] == o.server_name
    assert report["verdict"] == scenario.verdict, brief
    assert report["federation_ok"] is (scenario.verdict in ("ok", "degraded")), brief
    for e in scenario.expect:
        target = _resolve_target(w, e.target)
        assert any(_matches(c, e, target) for c in report["checks"]), (
            f"expected {e.describe()} fragment={e.fragment!r} target={target}\n{brief}"
        )
    if scenario.allowed_problems is not None:
        unexplained = [
            c
            for c in _problems(report)
            if c["id"] not in scenario.allowed_problems
            and not any(
                _matches(c, e, _resolve_target(w, e.target)) for e in scenario.expect
            )
        ]
        assert not unexplained, f"unexplained warn/fail: {unexplained}\n{brief}"
    # The whole run stays within its budget (and a hanging probe does hang).
    assert report["duration_ms"] <= (TIMEOUT_S + RUN_OVERRUN_S) * 1000, brief
    assert o.endpoint_wall_s < TIMEOUT_S + RUN_OVERRUN_S + 2.0, o.endpoint_wall_s
    if scenario.uses_budget:
        assert report["duration_ms"] >= TIMEOUT_S * 1000 * 0.8, brief
        assert cli.report["duration_ms"] >= TIMEOUT_S * 1000 * 0.8, cli.report

    # The command line: the same verdict from outside, with the same network
    # checks (config and insider checks are skipped there).
    cli_verdict = scenario.cli_verdict or scenario.verdict
    cli_brief = _brief(cli.report)
    assert cli.report["verdict"] == cli_verdict, cli_brief + "\n" + cli.stderr
    assert cli.exit_code == (0 if cli_verdict in ("ok", "degraded") else 1), cli_brief
    for e in scenario.expect:
        if e.check.startswith(INSIDER_PREFIXES):
            continue
        target = _resolve_target(w, e.target)
        assert any(_matches(c, e, target) for c in cli.report["checks"]), (
            f"CLI: expected {e.describe()} fragment={e.fragment!r} target={target}\n{cli_brief}"
        )
    assert cli.wall_s < TIMEOUT_S + RUN_OVERRUN_S + CLI_STARTUP_BUDGET_S, cli.wall_s

    # The real peer federates exactly where we say federation works.
    if scenario.peer is not None:
        assert o.peer is not None
        assert o.peer[0] is scenario.peer, (
            f"we say {report['verdict']}, the peer says: {o.peer[1]}"
        )
        assert o.peer[0] is report["federation_ok"]


# -- fixtures and the test ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    netlab_pki: Pki,
    netlab_dns: DnsServer,
    netlab_peer_provider: Callable[[], PeerSynapse],
) -> Iterator[World]:
    require_root()
    if not nginx_available():
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    directory = tmp_path_factory.mktemp("scenarios")
    lab = Lab(
        directory / "lab", pki=netlab_pki, dns=netlab_dns, peer=netlab_peer_provider
    )
    the_world: World | None = None
    try:
        the_world = World(lab, directory)
        yield the_world
    finally:
        try:
            if the_world is not None:
                the_world.close()
                _write_rows(the_world.rows)
        finally:
            lab.close()


def _write_rows(rows: list[dict[str, Any]]) -> None:
    path = os.environ.get(ROWS_ENV)
    if path and rows:
        Path(path).write_text(json.dumps(rows, indent=2), encoding="utf-8")


def _params() -> list[Any]:
    return [
        pytest.param(
            s,
            id=s.id,
            marks=[pytest.mark.xfail(reason=s.known_bug, strict=False)]
            if s.known_bug
            else [],
        )
        for s in SCENARIOS
    ]


@pytest.mark.parametrize("scenario", _params())
def test_scenario(
    world: World,
    scenario: Scenario,
    netlab_peer_provider: Callable[[], PeerSynapse],
) -> None:
    peer = netlab_peer_provider() if scenario.peer is not None else None
    observed = _observe(world, scenario, peer)
    row = _row(scenario, observed)
    world.rows.append(row)
    row["passed"] = False
    _assert_scenario(world, scenario, observed)
    row["passed"] = True


def test_no_errors_in_the_synapse_logs(world: World) -> None:
    """After every scenario: no traceback through the module and no
    logcontext mistake in the logs of the Synapses that ran them."""
    for synapse in world.synapses:
        log = synapse.process.log_text()
        assert not tracebacks_from_us(log), tracebacks_from_us(log)[:2]
        assert not logcontext_errors(log), logcontext_errors(log)[:5]
