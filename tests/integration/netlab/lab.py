"""`Lab`: the lab's components wired together, for scenario tests.

    with Lab(tmp_path) as lab:                       # or the `lab` fixture
        ip = lab.ip("front")                         # a free 127.x.y.z (443/8448 free)
        cert = lab.cert("example.test")              # valid, from the lab's CA
        lab.with_zone({"example.test": {"A": ip}})
        lab.with_nginx(Vhost(address=ip, server_names=("example.test",), cert=cert,
                             well_known_server=well_known_server("example.test:443"),
                             upstream=synapse.upstream))
        # ... or the usual shape in one call:
        lab.serve_federation("example.test", upstream=synapse.upstream)
        filtered_ip = lab.filtered(8448)             # connect() to it times out
        module_config = lab.module_config()          # dns_servers + tls_ca_file
        ok, why = lab.peer().can_federate_with("example.test")

Components start on first use and stop in `close()`, in reverse order. A Lab
may borrow a session-wide PKI, DNS server and peer (see fixtures.py): those
are not stopped by `close()`, but the borrowed DNS server's zone is cleared.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from . import leftovers
from .certs import CertFiles, CertVariant, Pki
from .dns_server import DnsServer, ZoneSpec
from .loopback import free_loopback_ip
from .netns import LoopbackFilter, Netns
from .nginx import Nginx, ProxyVariant, Vhost, WellKnown, well_known_server
from .peer import PeerSynapse


def start_dns_server(port: int = 53) -> DnsServer:
    """A DNS server on port 53 of a free loopback address (as root), or on a
    random port if 53 can't be bound (then the peer Synapse can't use it)."""
    try:
        return DnsServer(port=port).start()
    except OSError:
        return DnsServer().start()


class Lab:
    def __init__(
        self,
        directory: str | Path,
        *,
        pki: Pki | None = None,
        dns: DnsServer | None = None,
        peer: PeerSynapse | Callable[[], PeerSynapse] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        leftovers.sweep()  # what a killed earlier run left behind
        self._pki = pki
        self._dns = dns
        self._peer: PeerSynapse | None = peer if isinstance(peer, PeerSynapse) else None
        self._peer_provider = None if isinstance(peer, PeerSynapse) else peer
        self._owns_dns = dns is None
        self._owns_peer = peer is None
        self._nginx: Nginx | None = None
        self._netns: Netns | None = None
        self._ips: dict[str, str] = {}
        self._cleanups: list[Callable[[], object]] = []

    # -- components ------------------------------------------------------------

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            self._pki = Pki(self.directory / "pki")
        return self._pki

    @property
    def ca_file(self) -> Path:
        """The root CA alone: `tls_ca_file` for the module,
        `federation_custom_ca_list` for a Synapse."""
        return self.pki.ca_file

    @property
    def dns(self) -> DnsServer:
        if self._dns is None:
            self._dns = start_dns_server()
            self._owns_dns = True
        return self._dns

    @property
    def nginx(self) -> Nginx:
        if self._nginx is None:
            self._nginx = Nginx(self.directory / "nginx")
        return self._nginx

    @property
    def netns(self) -> Netns:
        if self._netns is None:
            self._netns = Netns().create()
        return self._netns

    def ip(self, label: str = "default") -> str:
        """A loopback address of its own for `label` (the same on every call),
        with TCP 443 and 8448 free."""
        if label not in self._ips:
            taken = set(self._ips.values())
            for _ in range(10):
                ip = free_loopback_ip(ports=(443, 8448))
                if ip not in taken:
                    break
            self._ips[label] = ip
        return self._ips[label]

    def cert(
        self,
        *names: str,
        variant: CertVariant | str = CertVariant.VALID,
        days: int | None = None,
    ) -> CertFiles:
        return self.pki.issue(*names, variant=variant, days=days)

    def server_name(self, label: str = "hs") -> str:
        """A server name in the fake zone that no other test uses
        (`<label>-<random>.test`): a peer shared between tests caches what it
        learnt about a name (well-known, keys), so give each scenario its own."""
        clean = re.sub(r"[^a-z0-9-]", "-", label.lower()).strip("-") or "hs"
        return f"{clean[:40]}-{secrets.token_hex(3)}.test"

    # -- DNS -------------------------------------------------------------------

    def with_zone(self, zone: ZoneSpec, *, replace: bool = True) -> Lab:
        """Set the fake zone (`replace=False`: only the names given)."""
        if replace:
            self.dns.set_zone(zone)
        else:
            self.dns.update(zone)
        return self

    # -- nginx -----------------------------------------------------------------

    def with_nginx(self, *vhosts: Vhost, replace: bool = True) -> Lab:
        """Serve these vhosts (start nginx, or reload it)."""
        if replace:
            self.nginx.vhosts = list(vhosts)
        else:
            self.nginx.vhosts.extend(vhosts)
        self.nginx.reload()  # starts it when it isn't running
        return self

    def serve_federation(
        self,
        server_name: str,
        *,
        upstream: str,
        ip: str | None = None,
        ports: Sequence[int] = (443,),
        cert: CertFiles | None = None,
        cert_variant: CertVariant | str = CertVariant.VALID,
        proxy: ProxyVariant = ProxyVariant.CORRECT,
        well_known: WellKnown | None | str = "auto",
        dns: bool = True,
        replace: bool = False,
    ) -> str:
        """The usual deployment: `server_name` resolves (A) to `ip`, where nginx
        serves TLS on `ports` with a certificate for the name, a well-known
        `{"m.server": "<server_name>:<first port>"}` (unless given; None: 404)
        and proxies to `upstream`. Returns the IP."""
        address = ip or self.ip(server_name)
        if cert is None:
            cert = self.cert(server_name, variant=cert_variant)
        wk = (
            well_known_server(f"{server_name}:{ports[0]}")
            if well_known == "auto"
            else well_known
        )
        if isinstance(wk, str):
            raise ValueError("well_known: a WellKnown, None or 'auto'")
        if dns:
            self.dns.update({server_name: {"A": [address]}})
        vhosts = [
            Vhost(
                address=address,
                port=port,
                server_names=(server_name,),
                cert=cert,
                well_known_server=wk,
                proxy=proxy,
                upstream=upstream,
            )
            for port in ports
        ]
        self.with_nginx(*vhosts, replace=replace)
        return address

    # -- filtered ports ----------------------------------------------------------

    def filtered(self, *ports: int, how: str = "drop") -> str:
        """An address (inside the lab's namespace) where TCP to `ports` is
        dropped (a timeout) — or `how="unreachable"` / `"reset"`."""
        for port in ports or (8448,):
            self.netns.block_port(port, how=how)
        return self.netns.ns_ip

    def filtered_loopback(self, port: int = 8448, how: str = "drop") -> str:
        """The pure-loopback alternative: a 127.x.y.z of its own where TCP to
        `port` is dropped by an nftables table on the host's `lo` (removed at
        close())."""
        ip = self.ip(f"filtered-loopback-{port}-{how}")
        rule = LoopbackFilter(ip, port, how).create()
        self.on_close(rule.close)
        return ip

    # -- the peer --------------------------------------------------------------

    def peer(self) -> PeerSynapse:
        """The peer Synapse (started on first use) that resolves through the
        lab's DNS server and trusts the lab's CA."""
        if self._peer is None and self._peer_provider is not None:
            self._peer = self._peer_provider()
        if self._peer is None:
            if self.dns.port != 53:
                raise RuntimeError(
                    "the peer Synapse needs the lab's DNS server on port 53 (root)"
                )
            self._peer = PeerSynapse(
                self.directory / "peer", dns_ip=self.dns.host, ca_file=self.ca_file
            ).start()
            self._owns_peer = True
        return self._peer

    # -- the module ----------------------------------------------------------------

    def module_config(self, **overrides: Any) -> dict[str, Any]:
        """synapse_fedhealth's config pointing at the lab: its DNS server and CA."""
        config: dict[str, Any] = {
            "dns_servers": [self.dns.address],
            "tls_ca_file": str(self.ca_file),
        }
        config.update(overrides)
        return config

    # -- teardown ------------------------------------------------------------------

    def on_close(self, fn: Callable[[], object]) -> None:
        """Run `fn` at close() (last registered, first run)."""
        self._cleanups.append(fn)

    def close(self) -> None:
        errors: list[BaseException] = []
        steps: list[Callable[[], object]] = list(reversed(self._cleanups))
        self._cleanups.clear()
        if self._peer is not None and self._owns_peer:
            steps.append(self._peer.stop)
        if self._nginx is not None:
            steps.append(self._nginx.stop)
        if self._netns is not None:
            steps.append(self._netns.close)
        if self._dns is not None:
            if self._owns_dns:
                steps.append(self._dns.stop)
            else:
                steps += [self._dns.clear, self._dns.clear_queries]
        for step in steps:
            try:
                step()
            except BaseException as e:  # keep tearing down, report the first
                errors.append(e)
        self._nginx = None
        self._netns = None
        if errors:
            raise errors[0]

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def vhost_variants(base: Vhost, proxies: Iterable[ProxyVariant]) -> list[Vhost]:
    """`base` with each proxy variant (for parametrized tests)."""
    import attr

    return [attr.evolve(base, proxy=p) for p in proxies]
