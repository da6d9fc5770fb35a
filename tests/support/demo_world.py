"""The demo's small world (`bash .ci/demo` as root): a private network
namespace where nginx, with a certificate from a private CA, fronts the demo
Synapse, and a DNS stub that knows only the world's names.

    world = DemoWorld(tmp / "world", "fedhealth.example", "https://matrix.fedhealth.example/")
    world.create(upstream_port=18008)   # namespace, CA, DNS, nginx: healthy
    world.serve_leaf_only()             # nginx drops the intermediate (SIGHUP)
    world.serve_full_chain()            # and puts it back (SIGHUP)
    world.close()

Layout: a veth pair on a private /30 from the lab's pool (10.213.0.0/16). The
host end (`host_ip`) carries the DNS stub and Synapse's listener; the
namespace end (`ns_ip`) carries nginx: HTTPS on 443 for the server name (the
site: its well-knowns delegate to the Matrix host) and for public_baseurl's
host (the Matrix host: proxies to Synapse), each with its own certificate, and
plain HTTP on 80 for the CA's AIA URL (where the intermediate is published, as
public CAs do). The break touches the Matrix host only, so discovery still
works and the report names the certificate itself. The module resolves through
the stub and trusts the private root only, so nothing leaves the veth pair.

The CA is built with `cryptography` (tests/support/aia_pki.py), which Synapse
brings: the demo installs nothing Python for it. Its leaf carries AIA, so
the module can tell a missing intermediate from an untrusted CA.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import urllib.parse
from pathlib import Path

import attr

from tests.integration.netlab.certs import CertFiles, CertVariant
from tests.integration.netlab.dns_server import DnsServer
from tests.integration.netlab.netns import Netns
from tests.integration.netlab.netns import available as netns_available
from tests.integration.netlab.nginx import (
    Nginx,
    ProxyVariant,
    Vhost,
    WellKnown,
    nginx_available,
    well_known_server,
)
from tests.support.aia_pki import INTERMEDIATE_PATH, AiaPki

CA_HOST_LABEL = "ca"  # the AIA URL's host: ca.<server_name>


def unavailable_reason() -> str | None:
    """Why the world can't be built here (None: it can)."""
    if os.geteuid() != 0:
        return "not root (a network namespace and nginx on port 443 need root)"
    if not nginx_available():
        return "nginx is not installed (Debian: apt-get install nginx-light)"
    if shutil.which("setpriv") is None:
        return "setpriv is missing (Debian: util-linux)"
    ok, why = netns_available()
    if not ok:
        return f"no network namespaces here: {why}"
    return None


class DemoWorld:
    """See the module docstring."""

    def __init__(
        self, directory: str | Path, server_name: str, public_baseurl: str
    ) -> None:
        self.directory = Path(directory).absolute()
        self.server_name = server_name
        self.public_baseurl = public_baseurl
        # Federation is delegated (well-known) to public_baseurl's host, the
        # usual shape of a deployment behind a reverse proxy.
        self.delegated = urllib.parse.urlsplit(public_baseurl).hostname or server_name
        self.ca_host = f"{CA_HOST_LABEL}.{server_name}"
        self.netns = Netns()
        self.dns: DnsServer | None = None
        self.nginx: Nginx | None = None
        self.upstream_port = 0
        self._site_cert: CertFiles | None = None
        self._cert: CertFiles | None = None  # the Matrix host's, which breaks
        self._intermediate_der: Path | None = None
        self.ca_file = self.directory / "pki" / "root-ca.pem"

    # -- addresses -----------------------------------------------------------

    @property
    def host_ip(self) -> str:
        return self.netns.host_ip

    @property
    def ns_ip(self) -> str:
        return self.netns.ns_ip

    @property
    def network(self) -> str:
        """The world's addresses, as an `ip_range_whitelist` entry."""
        assert self.netns.subnet is not None
        return str(self.netns.subnet)

    # -- life cycle ----------------------------------------------------------

    def create(self, upstream_port: int) -> DemoWorld:
        """Namespace, CA, DNS and nginx, serving the healthy setup; nginx
        proxies to Synapse on host_ip:`upstream_port` (started later)."""
        self.upstream_port = upstream_port
        try:
            self.netns.create()
            self._issue_certificates()
            self.dns = DnsServer(host=self.host_ip).start()
            self.dns.set_zone(
                {
                    name: {"A": [self.ns_ip]}
                    for name in (self.server_name, self.delegated, self.ca_host)
                }
            )
            assert self._cert is not None
            self.nginx = Nginx(
                self.directory / "nginx", self._vhosts(self._cert), netns=self.netns
            )
            self.nginx.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop nginx and the DNS stub, delete the namespace (each step runs
        even if one before it fails)."""
        steps = []
        if self.nginx is not None:
            steps.append(self.nginx.stop)
        if self.dns is not None:
            steps.append(self.dns.stop)
        steps.append(self.netns.close)
        errors: list[BaseException] = []
        for step in steps:
            try:
                step()
            except BaseException as e:
                errors.append(e)
        self.nginx = None
        self.dns = None
        if errors:
            raise errors[0]

    def __enter__(self) -> DemoWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the break and the fix -------------------------------------------------

    def serve_leaf_only(self) -> None:
        """Point the Matrix host's `ssl_certificate` at the leaf alone, and
        reload nginx."""
        assert self._cert is not None
        self._reload(
            attr.evolve(
                self._cert,
                variant=CertVariant.MISSING_INTERMEDIATE,
                served_chain=self._cert.leaf,
            )
        )

    def serve_full_chain(self) -> None:
        """Put the full chain (leaf + intermediate) back and reload."""
        assert self._cert is not None
        self._reload(self._cert)

    def _reload(self, cert: CertFiles) -> None:
        assert self.nginx is not None
        self.nginx.vhosts = self._vhosts(cert)
        self.nginx.reload()  # SIGHUP; returns once the new config serves

    # -- pieces ----------------------------------------------------------------

    def _issue_certificates(self) -> None:
        pki_dir = self.directory / "pki"
        pki_dir.mkdir(parents=True, exist_ok=True)
        pki = AiaPki(f"http://{self.ca_host}")
        self.ca_file.write_bytes(pki.root.pem)
        der = pki_dir / INTERMEDIATE_PATH.lstrip("/")
        der.write_bytes(pki.intermediate.der)
        self._intermediate_der = der
        self._site_cert = _write_leaf(pki, pki_dir, self.server_name)
        self._cert = _write_leaf(pki, pki_dir, self.delegated)

    def _vhosts(self, cert: CertFiles) -> list[Vhost]:
        """The site (`server_name`: the well-knowns only), the Matrix host
        (`delegated`, with `cert`: proxies to Synapse) and the CA's
        publication point (plain HTTP, as AIA URLs are)."""
        assert self._intermediate_der is not None and self._site_cert is not None
        upstream_host = self.host_ip
        if isinstance(ipaddress.ip_address(upstream_host), ipaddress.IPv6Address):
            upstream_host = f"[{upstream_host}]"
        site = Vhost(
            address=self.ns_ip,
            port=443,
            server_names=(self.server_name,),
            cert=self._site_cert,
            well_known_server=well_known_server(f"{self.delegated}:443"),
            well_known_client=WellKnown(
                {"m.homeserver": {"base_url": self.public_baseurl}},
                headers={"Access-Control-Allow-Origin": "*"},
            ),
            proxy=ProxyVariant.NONE,
        )
        matrix = Vhost(
            address=self.ns_ip,
            port=443,
            server_names=(self.delegated,),
            cert=cert,
            proxy=ProxyVariant.CORRECT,
            upstream=f"http://{upstream_host}:{self.upstream_port}",
        )
        ca = Vhost(
            address=self.ns_ip,
            port=80,
            server_names=(self.ca_host,),
            proxy=ProxyVariant.NONE,
            extra=(
                f"location = {INTERMEDIATE_PATH} {{\n"
                "    types { }\n"
                "    default_type application/pkix-cert;\n"
                f"    alias {self._intermediate_der};\n"
                "}"
            ),
        )
        return [site, matrix, ca]


def _write_leaf(pki: AiaPki, directory: Path, name: str) -> CertFiles:
    """A leaf for `name` from the intermediate (with AIA), as nginx's files
    in `directory`/`name`: key.pem, leaf.pem (the leaf alone) and
    fullchain.pem (leaf + intermediate)."""
    leaf = pki.leaf(name)
    files = directory / name
    files.mkdir()
    key = files / "key.pem"
    key.write_bytes(leaf.key_pem)
    key.chmod(0o600)
    leaf_pem = files / "leaf.pem"
    leaf_pem.write_bytes(leaf.pem)
    fullchain = files / "fullchain.pem"
    fullchain.write_bytes(leaf.pem + pki.intermediate.pem)
    return CertFiles(
        variant=CertVariant.VALID,
        names=(name,),
        key=key,
        leaf=leaf_pem,
        fullchain=fullchain,
        served_chain=fullchain,
        not_before=leaf.cert.not_valid_before_utc,
        not_after=leaf.cert.not_valid_after_utc,
    )
