"""A second, real Synapse as a federation peer, and small plain Synapses as
federation targets.

The peer resolves names the way any Synapse does: SRV through Twisted's DNS
client, A/AAAA through getaddrinfo (glibc), both reading /etc/resolv.conf
(port 53 only: neither takes another port). So the peer runs in a private
mount namespace in which /etc/resolv.conf is a bind mount of a file naming
the lab's DNS server (which must listen on port 53 of some 127.x address):

    unshare --mount -- sh -c 'mount --bind RESOLV /etc/resolv.conf && exec python -m synapse.app.homeserver ...'

That wrapper is passed to `tests.support.synapse_process.SynapseProcess` as its
`python`, so the process is still `SynapseProcess`'s own child with the same
PID (unshare, sh and the wrapper exec). /etc/hosts stays the host's. Any name
the lab's DNS server doesn't know is NXDOMAIN, so the peer never resolves or
reaches anything outside the lab.

The peer trusts only the lab's root CA (`federation_custom_ca_list`) and allows
loopback and the lab's namespaces (`ip_range_whitelist`).

    peer = PeerSynapse(tmp_path / "peer", dns_ip=dns.host, ca_file=pki.ca_file).start()
    ok, detail = peer.can_federate_with("example.test")
    peer.reset()   # a fresh database and process: no cached keys, well-knowns, backoff

`can_federate_with` makes the peer act as a notary for the target: it is the
first thing a federating server does (fetch the target's keys, through
well-known/SRV discovery, TLS and the target's proxy).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.synapse_process import (
    HttpResponse,
    SynapseProcess,
    free_port,
    http_request,
)

PEER_SERVER_NAME = "peer.netlab.test"
SHARED_SECRET = "netlab-shared-secret"
# Allowed destinations for the peer's federation traffic: loopback and the
# /16 the lab's network namespaces are carved from.
PEER_IP_ALLOWLIST = ["127.0.0.0/8", "::1/128", "10.213.0.0/16"]
KEY_QUERY_TIMEOUT_S = (
    90.0  # the peer's own retries on an unreachable target take a while
)
PROBE_KEY_ID = "ed25519:netlab_probe"
FORCE_REFETCH_MS = (
    30 * 24 * 3600 * 1000
)  # minimum_valid_until_ts this far ahead forces a fetch
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


def base_config(
    server_name: str,
    port: int,
    *,
    x_forwarded: bool = True,
    resources: tuple[str, ...] = ("client", "federation"),
    **extra: Any,
) -> dict[str, Any]:
    """A small sqlite homeserver config with one plain-HTTP listener on
    127.0.0.1:port (relative paths are in Synapse's directory)."""
    config: dict[str, Any] = {
        "server_name": server_name,
        "public_baseurl": f"https://{server_name}/",
        "report_stats": False,
        "signing_key_path": "signing.key",
        "media_store_path": "media_store",
        "registration_shared_secret": SHARED_SECRET,
        "macaroon_secret_key": "netlab-macaroon-secret",
        "form_secret": "netlab-form-secret",
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "enable_metrics": False,
        "database": {"name": "sqlite3", "args": {"database": "homeserver.db"}},
        "listeners": [
            {
                "port": port,
                "type": "http",
                "bind_addresses": ["127.0.0.1"],
                "x_forwarded": x_forwarded,
                "resources": [{"names": list(resources), "compress": False}],
            }
        ],
    }
    config.update(extra)
    return config


_REPO = Path(__file__).resolve().parents[3]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxy settings (every request stays on loopback),
    with the repository on PYTHONPATH: a test may load a module of its own
    (`tests.integration.…`) into Synapse."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra or {})
    return env


def wipe_database(directory: Path) -> None:
    for path in directory.glob("homeserver.db*"):
        path.unlink()
    shutil.rmtree(directory / "media_store", ignore_errors=True)


class PlainSynapse:
    """A Synapse without any module, as the server behind the proxy:
    listens on 127.0.0.1:`port` (client + federation, x_forwarded)."""

    def __init__(
        self,
        directory: str | Path,
        server_name: str,
        *,
        port: int | None = None,
        x_forwarded: bool = True,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.server_name = server_name
        self.port = port or free_port()
        config = base_config(server_name, self.port, x_forwarded=x_forwarded)
        config.update(extra_config or {})
        self.process = SynapseProcess(self.directory, config, env=clean_env())

    @property
    def upstream(self) -> str:
        """What nginx should proxy_pass to."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def start(self) -> PlainSynapse:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def key_ids(self) -> list[str]:
        """The key IDs this server publishes (asked directly, on loopback)."""
        body = http_request(f"{self.base_url}/_matrix/key/v2/server", timeout=10).json()
        return sorted(body.get("verify_keys", {}))

    def __enter__(self) -> PlainSynapse:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PeerSynapse:
    """See the module docstring. `dns_ip` is the address of a DNS server on
    port 53 (`DnsServer(port=53).host`)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        dns_ip: str,
        ca_file: str | Path,
        server_name: str = PEER_SERVER_NAME,
        port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.server_name = server_name
        self.dns_ip = dns_ip
        self.port = port or free_port()
        self.resolv_conf = self.directory / "resolv.conf"
        self.resolv_conf.write_text(
            "# the lab's DNS server, bind-mounted over /etc/resolv.conf for the peer\n"
            f"nameserver {dns_ip}\n"
            "options timeout:2 attempts:2\n"
        )
        self.wrapper = self.directory / "python-in-lab-dns"
        self.wrapper.write_text(
            "#!/bin/sh\n"
            "# Python in a private mount namespace whose /etc/resolv.conf names the lab's DNS.\n"
            "exec unshare --mount --propagation private -- /bin/sh -c "
            '\'mount --bind "$0" /etc/resolv.conf && exec "$@"\' '
            f'{_sh_quote(str(self.resolv_conf))} {_sh_quote(_python())} "$@"\n'
        )
        self.wrapper.chmod(0o755)
        config = base_config(
            server_name,
            self.port,
            x_forwarded=False,
            ip_range_whitelist=PEER_IP_ALLOWLIST,
            federation_custom_ca_list=[str(Path(ca_file).absolute())],
            federation_verify_certificates=True,
        )
        config.update(extra_config or {})
        self.process = SynapseProcess(
            self.directory, config, python=str(self.wrapper), env=clean_env()
        )

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def started_in_s(self) -> float | None:
        return self.process.started_in_s

    def start(self) -> PeerSynapse:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def reset(self) -> PeerSynapse:
        """Stop, wipe the database (cached keys, destinations' backoff) and
        start again: a peer that has never seen anyone. Synapse also caches
        well-known results in memory, which the restart drops."""
        self.stop()
        wipe_database(self.directory)
        return self.start()

    def __enter__(self) -> PeerSynapse:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- asking the peer -------------------------------------------------------

    def key_query(
        self,
        server_name: str,
        key_id: str = PROBE_KEY_ID,
        *,
        minimum_valid_until_ts: int | None = None,
        timeout: float = KEY_QUERY_TIMEOUT_S,
    ) -> HttpResponse:
        """POST /_matrix/key/v2/query on the peer: makes it fetch
        `server_name`'s keys (unless cached and fresh enough)."""
        criteria: dict[str, Any] = {}
        if minimum_valid_until_ts is not None:
            criteria["minimum_valid_until_ts"] = minimum_valid_until_ts
        return http_request(
            f"{self.base_url}/_matrix/key/v2/query",
            method="POST",
            body={"server_keys": {server_name: {key_id: criteria}}},
            timeout=timeout,
        )

    def cached_keys(
        self, server_name: str, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Every key response of `server_name` the peer holds
        (GET /_matrix/key/v2/query/<server_name>; it fetches nothing)."""
        response = http_request(
            f"{self.base_url}/_matrix/key/v2/query/{urllib.parse.quote(server_name, safe='')}",
            timeout=timeout,
        )
        if response.status != 200:
            return []
        keys = response.json().get("server_keys", [])
        return [k for k in keys if isinstance(k, dict)]

    def can_federate_with(
        self,
        server_name: str,
        key_id: str | None = None,
        *,
        timeout: float = KEY_QUERY_TIMEOUT_S,
    ) -> tuple[bool, str]:
        """Whether the peer can fetch `server_name`'s keys right now, and a
        detail (what it got, or its log lines about the failure).

        The query asks for `key_id` (or a probe ID nobody has) with a
        `minimum_valid_until_ts` far ahead, which forces a fetch from the
        target; then the peer's cache is read. On a peer that has seen the
        target before, keys cached earlier count too: `reset()` first when
        that matters, or pass the `key_id` the target serves now.
        """
        log_offset = len(self.process.log_text())
        now_ms = int(time.time() * 1000)
        began = time.monotonic()
        try:
            response = self.key_query(
                server_name,
                key_id or PROBE_KEY_ID,
                minimum_valid_until_ts=now_ms + FORCE_REFETCH_MS,
                timeout=timeout,
            )
        except OSError as e:
            return False, f"the peer did not answer the key query: {e}"
        took = time.monotonic() - began
        if response.status != 200:
            return (
                False,
                f"the peer answered the key query with {response.status}: {response.text[:500]}",
            )
        keys = self.cached_keys(server_name)
        good = [
            k
            for k in keys
            if k.get("server_name") == server_name
            and isinstance(k.get("verify_keys"), dict)
            and k["verify_keys"]
            and isinstance(k.get("valid_until_ts"), int)
            and k["valid_until_ts"] > now_ms
            and (key_id is None or key_id in k["verify_keys"])
        ]
        if good:
            ids = sorted({i for k in good for i in k["verify_keys"]})
            return True, f"the peer fetched {server_name}'s keys {ids} in {took:.1f} s"
        lines = self._log_lines_about(server_name, log_offset)
        got = json.dumps(keys)[:300] if keys else "no keys"
        return False, (
            f"the peer could not fetch {server_name}'s keys in {took:.1f} s ({got}); its log:\n"
            + ("\n".join(lines) or "(nothing about it)")
        )

    def _log_lines_about(
        self, server_name: str, offset: int, limit: int = 15
    ) -> list[str]:
        text = self.process.log_text()[offset:]
        pattern = re.compile(re.escape(server_name))
        lines = [
            line
            for line in text.splitlines()
            if pattern.search(line)
            and (
                " - WARNING - " in line
                or " - ERROR - " in line
                or "rror" in line
                or "ailed" in line
            )
        ]
        return lines[-limit:]


def _python() -> str:
    import sys

    return sys.executable


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"
