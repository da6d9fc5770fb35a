"""pytest fixtures for the lab. Use them from a test module or a conftest:

    from tests.integration.netlab.fixtures import *  # noqa: F403

Session-wide (started once, on first use): `netlab_pki` (the CA),
`netlab_dns` (the DNS server, on port 53 of a 127.x address when root),
`netlab_peer` (the peer Synapse; ~4 s to start).
Per test: `lab` (a `Lab` that borrows those; its zone is cleared, and its
nginx, namespace and `on_close` callbacks are torn down after the test), and
`plain_synapse_factory` (module-less Synapses behind the proxy, stopped after
the test).

The peer is shared by the session: give each scenario its own server name
(`lab.server_name("label")`), or `netlab_peer.reset()` for a peer that has seen
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import leftovers
from .certs import Pki
from .dns_server import DnsServer
from .lab import Lab, start_dns_server
from .netns import available as netns_available
from .nginx import nginx_available
from .peer import PeerSynapse, PlainSynapse

__all__ = [
    "lab",
    "netlab_dns",
    "netlab_peer",
    "netlab_peer_provider",
    "netlab_pki",
    "plain_synapse_factory",
    "require_root",
]


def require_root() -> None:
    """Skip unless root (port 53, nginx on :443, namespaces, nftables)."""
    if os.geteuid() != 0:
        pytest.skip("the network lab needs root (port 53/443, netns, nftables)")


@pytest.fixture(scope="session")
def netlab_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("netlab-pki"))


@pytest.fixture(scope="session")
def netlab_dns() -> Iterator[DnsServer]:
    leftovers.sweep()  # what a killed earlier run left behind
    server = start_dns_server()
    try:
        yield server
    finally:
        server.stop()


class _LazyPeer:
    def __init__(self, directory: Path, dns: DnsServer, pki: Pki) -> None:
        self.directory = directory
        self.dns = dns
        self.pki = pki
        self.peer: PeerSynapse | None = None

    def get(self) -> PeerSynapse:
        if self.peer is None:
            if self.dns.port != 53:
                pytest.skip(
                    "the peer Synapse needs the lab's DNS server on port 53 (root)"
                )
            self.peer = PeerSynapse(
                self.directory, dns_ip=self.dns.host, ca_file=self.pki.ca_file
            ).start()
        return self.peer

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()


@pytest.fixture(scope="session")
def netlab_peer_provider(
    tmp_path_factory: pytest.TempPathFactory, netlab_dns: DnsServer, netlab_pki: Pki
) -> Iterator[Callable[[], PeerSynapse]]:
    """Starts the session's peer on first call."""
    lazy = _LazyPeer(tmp_path_factory.mktemp("netlab-peer"), netlab_dns, netlab_pki)
    try:
        yield lazy.get
    finally:
        lazy.stop()


@pytest.fixture
def netlab_peer(netlab_peer_provider: Callable[[], PeerSynapse]) -> PeerSynapse:
    return netlab_peer_provider()


@pytest.fixture
def lab(
    tmp_path: Path,
    netlab_pki: Pki,
    netlab_dns: DnsServer,
    netlab_peer_provider: Callable[[], PeerSynapse],
) -> Iterator[Lab]:
    if not nginx_available():
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    the_lab = Lab(
        tmp_path / "lab", pki=netlab_pki, dns=netlab_dns, peer=netlab_peer_provider
    )
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def plain_synapse_factory(tmp_path: Path) -> Iterator[Callable[[str], PlainSynapse]]:
    """`factory(server_name)`: a started module-less Synapse on 127.0.0.1."""
    started: list[PlainSynapse] = []

    def factory(server_name: str) -> PlainSynapse:
        synapse = PlainSynapse(tmp_path / f"synapse-{server_name}", server_name)
        started.append(synapse)
        return synapse.start()

    try:
        yield factory
    finally:
        for synapse in started:
            synapse.stop()


def skip_without_netns() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(f"network namespaces unavailable: {why}")
