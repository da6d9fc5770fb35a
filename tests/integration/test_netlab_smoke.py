"""The network lab works end to end: the fake zone's DNS server answers,
nginx serves the well-known over TLS with the lab's CA on 127.x:443, a
filtered port times out, and a real peer Synapse, resolving through the
lab's DNS, fetches the keys of a plain Synapse behind nginx."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable

import pytest

from tests.integration.netlab.certs import CertVariant
from tests.integration.netlab.dns_server import resolve, srv
from tests.integration.netlab.fixtures import *  # noqa: F403
from tests.integration.netlab.fixtures import require_root, skip_without_netns
from tests.integration.netlab.lab import Lab
from tests.integration.netlab.nginx import ProxyVariant, WellKnown
from tests.integration.netlab.peer import PlainSynapse
from tests.integration.netlab.probe import https_get, tcp_connect

pytestmark = pytest.mark.integration


def test_lab_end_to_end(
    lab: Lab, plain_synapse_factory: Callable[[str], PlainSynapse]
) -> None:
    require_root()
    name = lab.server_name("target")
    delegated = f"matrix.{name}"  # m.server without a port: the peer looks up SRV
    target = plain_synapse_factory(name)
    ip = lab.ip("front")

    # DNS: the well-known host, an SRV record for the delegated name, its target.
    lab.with_zone(
        {
            name: {"A": ip},
            f"_matrix-fed._tcp.{delegated}": {"SRV": [srv(10, 0, 443, f"fed.{name}")]},
            f"fed.{name}": {"A": ip},
        }
    )
    assert resolve(lab.dns, name) == [ip]
    assert resolve(lab.dns, f"_matrix-fed._tcp.{delegated}", "SRV") == [
        f"10 0 443 fed.{name}."
    ]

    # nginx: TLS on ip:443 with a certificate from the lab's CA.
    began = time.monotonic()
    lab.serve_federation(
        name,
        upstream=target.upstream,
        ip=ip,
        cert=lab.cert(name, delegated),
        well_known=WellKnown({"m.server": delegated}),
        dns=False,
    )
    assert time.monotonic() - began < 5
    wk = https_get(ip, 443, name, "/.well-known/matrix/server", cafile=lab.ca_file)
    assert wk.status == 200, wk
    assert wk.headers["content-type"] == "application/json"
    assert json.loads(wk.body) == {"m.server": delegated}
    keys = https_get(ip, 443, delegated, "/_matrix/key/v2/server", cafile=lab.ca_file)
    assert keys.status == 200 and json.loads(keys.body)["server_name"] == name
    # ... and TLS really is verified: another name is rejected.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(ip, 443, "other.test", "/", cafile=lab.ca_file)

    # The peer, resolving through the lab's DNS, fetches the target's keys.
    peer = lab.peer()
    ok, detail = peer.can_federate_with(name, target.key_ids()[0])
    assert ok, detail
    # It asked our DNS server: SRV (Twisted's resolver) and A (getaddrinfo).
    assert lab.dns.queries_for(f"_matrix-fed._tcp.{delegated}", "SRV")
    assert lab.dns.queries_for(f"fed.{name}", "A")

    # ... and it judges TLS with the lab's CA: an expired certificate fails.
    expired = lab.server_name("expired")
    lab.serve_federation(
        expired,
        upstream=target.upstream,
        ip=lab.ip("expired"),
        cert_variant=CertVariant.EXPIRED,
    )
    ok, detail = peer.can_federate_with(expired)
    assert not ok
    assert "certificate" in detail.lower() or "ssl" in detail.lower(), detail


def test_filtered_port_times_out(lab: Lab) -> None:
    require_root()
    skip_without_netns()
    ip = lab.filtered(8448)
    began = time.monotonic()
    assert tcp_connect(ip, 8448, timeout=1.0) == "timeout"
    assert 0.9 <= time.monotonic() - began < 3
    assert tcp_connect(ip, 8449, timeout=1.0) == "refused"
    lab.netns.block_port(443, how="unreachable")
    assert tcp_connect(ip, 443, timeout=1.0) == "unreachable"
    # The pure-loopback alternative.
    lo_ip = lab.filtered_loopback(8448)
    assert tcp_connect(lo_ip, 8448, timeout=1.0) == "timeout"
    assert tcp_connect(lo_ip, 8449, timeout=1.0) == "refused"
    # The namespace has an IPv6 address too (when the host has IPv6).
    if lab.netns.ns_ip6:
        assert tcp_connect(lab.netns.ns_ip6, 8448, timeout=1.0) == "timeout"
        assert tcp_connect(lab.netns.ns_ip6, 8449, timeout=1.0) == "refused"


def test_proxy_variants(
    lab: Lab, plain_synapse_factory: Callable[[str], PlainSynapse]
) -> None:
    require_root()
    name = lab.server_name("proxied")
    target = plain_synapse_factory(name)
    ip = lab.serve_federation(name, upstream=target.upstream)
    path = "/_matrix/federation/v1/version"
    assert https_get(ip, 443, name, path, cafile=lab.ca_file).status == 200

    def served(proxy: ProxyVariant) -> int:
        lab.serve_federation(
            name, upstream=target.upstream, ip=ip, proxy=proxy, replace=True
        )
        return https_get(ip, 443, name, path, cafile=lab.ca_file).status

    assert served(ProxyVariant.UPSTREAM_DOWN) == 502
    assert served(ProxyVariant.NOT_FEDERATION) == 404
    assert served(ProxyVariant.URI_REWRITE) == 200
    assert served(ProxyVariant.NO_FORWARDED_HEADERS) == 200
    assert served(ProxyVariant.CORRECT) == 200
