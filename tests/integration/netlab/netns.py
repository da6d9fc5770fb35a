"""Filtered ports: a TCP connect that times out instead of being refused.

The chosen design is a network namespace (`Netns`): `ip netns add`, a veth
pair on a private /30 (10.213.x.y, checked against the host's routes so it
shadows nothing), loopback up inside, and an nftables table *inside the
namespace* that drops (or rejects) what is sent to a port. Connecting from
the host to `ns.ns_ip:PORT` then times out (`drop`), gets "no route to host"
(`unreachable`), or is refused (nothing listens, or `reset`). Every packet
stays between the host end of the veth and the namespace (IPv4 and, when the host has
IPv6, a random ULA /64: `ns.ns_ip6`); the host's
firewall is never touched, and deleting the namespace removes the rules.

    with Netns() as ns:
        ns.block_port(8448)                    # drop: connect() times out
        ns.block_port(443, how="unreachable")  # ICMP host unreachable
        dns.update({"filtered.test": {"A": ns.ns_ip}})
        ns.run(["ip", "addr"])                 # a command inside

`LoopbackFilter` is the pure-loopback alternative: an nftables table of its
own on the host dropping TCP to ONE 127.x.y.z:port on `lo`, deleted on close.

Both need root (CAP_NET_ADMIN) and the `ip` and `nft` commands.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import leftovers
from .loopback import is_loopback

IP = "ip"
NFT = "nft"
COMMAND_TIMEOUT_S = 10.0
SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")
SUBNET_ATTEMPTS = 100
TABLE = "netlab"

BlockHow = str  # "drop" | "unreachable" | "reset"
_RULE_ACTIONS = {
    "drop": "drop",
    "unreachable": "reject with icmpx type host-unreachable",
    "reset": "reject with tcp reset",
}


class NetlabError(Exception):
    pass


def _run(cmd: Sequence[str], *, input: str | None = None) -> str:
    try:
        done = subprocess.run(
            list(cmd),
            input=input,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetlabError(f"{' '.join(cmd)}: {e}") from None
    if done.returncode != 0:
        raise NetlabError(
            f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def available() -> tuple[bool, str]:
    """Whether namespaces and nftables can be used here, and why not."""
    for tool in (IP, NFT):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed"
    try:
        _run([NFT, "list", "tables"])
        _run([IP, "netns", "list"])
    except NetlabError as e:
        return False, str(e)
    return True, ""


def _host_networks(
    version: int = 4,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    routes: list[dict[str, Any]] = json.loads(
        _run([IP, "-j", f"-{version}", "route", "show", "table", "all"]) or "[]"
    )
    for route in routes:
        dst = route.get("dst")
        if not isinstance(dst, str) or dst == "default":
            continue
        try:
            nets.append(ipaddress.ip_network(dst, strict=False))
        except ValueError:
            continue
    return nets


def _free_subnet6() -> ipaddress.IPv6Network:
    """A random ULA /64 (fd00::/8 with a random 40-bit ID) that overlaps no
    route of the host."""
    taken = _host_networks(6)
    for _ in range(SUBNET_ATTEMPTS):
        prefix = (0xFD << 120) | (secrets.randbits(56) << 64)
        candidate = ipaddress.IPv6Network((prefix, 64))
        if not any(candidate.overlaps(n) for n in taken):
            return candidate
    raise NetlabError("no free IPv6 /64")


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /30 in SUBNET_POOL that overlaps no route of the host."""
    taken = _host_networks()
    subnets = SUBNET_POOL.num_addresses // 4
    for _ in range(SUBNET_ATTEMPTS):
        index = secrets.randbelow(subnets)
        candidate = ipaddress.IPv4Network(
            (int(SUBNET_POOL.network_address) + 4 * index, 30)
        )
        if not any(candidate.overlaps(n) for n in taken):
            return candidate
    raise NetlabError(f"no free /30 in {SUBNET_POOL}")


class Netns:
    """See the module docstring."""

    def __init__(self) -> None:
        tag = secrets.token_hex(4)
        self.name = f"netlab-{tag}"
        self.host_if = f"nlh{tag}"  # at most 15 characters
        self.ns_if = f"nln{tag}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.host_ip = ""
        self.ns_ip = ""
        self.subnet6: ipaddress.IPv6Network | None = None
        self.host_ip6 = ""
        self.ns_ip6 = ""  # "" when IPv6 is off on this host
        self._created = False
        self._processes: list[subprocess.Popen[bytes]] = []
        self._blocked: dict[tuple[str, int], str] = {}
        self._record: Path | None = None

    def create(self) -> Netns:
        if self._created:
            return self
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.host_ip, self.ns_ip = str(hosts[0]), str(hosts[1])
        _LIVE.add(self)
        self._created = True
        self._record = leftovers.record("netns", name=self.name)
        try:
            _run([IP, "netns", "add", self.name])
            self._exec_ok([IP, "link", "set", "lo", "up"])
            _run(
                [
                    IP,
                    "link",
                    "add",
                    self.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    self.ns_if,
                ]
            )
            _run([IP, "link", "set", self.ns_if, "netns", self.name])
            _run([IP, "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
            _run([IP, "link", "set", self.host_if, "up"])
            self._exec_ok([IP, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if])
            self._exec_ok([IP, "link", "set", self.ns_if, "up"])
            self._add_ipv6()
            self._exec_ok(
                [NFT, "-f", "-"],
                input=(
                    f"table inet {TABLE} {{\n"
                    "  chain input {\n"
                    "    type filter hook input priority 0; policy accept;\n"
                    "  }\n"
                    "}\n"
                ),
            )
        except BaseException:
            self.close()
            raise
        return self

    def _add_ipv6(self) -> None:
        try:
            with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
                if f.read().strip() != "0":
                    return
        except OSError:
            return
        self.subnet6 = _free_subnet6()
        base = int(self.subnet6.network_address)
        host6, ns6 = ipaddress.IPv6Address(base + 1), ipaddress.IPv6Address(base + 2)
        # nodad: usable at once, without duplicate address detection's delay.
        _run([IP, "-6", "addr", "add", f"{host6}/64", "dev", self.host_if, "nodad"])
        self._exec_ok(
            [IP, "-6", "addr", "add", f"{ns6}/64", "dev", self.ns_if, "nodad"]
        )
        self.host_ip6, self.ns_ip6 = str(host6), str(ns6)

    def _exec_ok(self, cmd: Sequence[str], *, input: str | None = None) -> str:
        return _run([IP, "netns", "exec", self.name, *cmd], input=input)

    def block_port(self, port: int, how: BlockHow = "drop", proto: str = "tcp") -> None:
        """Make `proto` traffic to ns_ip:port (and ns_ip6:port) `drop`ped (a
        timeout), `unreachable` (ICMP host unreachable: EHOSTUNREACH at once
        over IPv4; over IPv6 Linux TCP treats it as a soft error, so that is a
        timeout too) or `reset` (refused)."""
        if how not in _RULE_ACTIONS:
            raise ValueError(f"how must be one of {sorted(_RULE_ACTIONS)}")
        if proto not in ("tcp", "udp"):
            raise ValueError("proto must be tcp or udp")
        if proto == "udp" and how == "reset":
            raise ValueError("reset is for tcp")
        self._exec_ok(
            [NFT, "add", "rule", "inet", TABLE, "input", proto, "dport", str(int(port)),
             *_RULE_ACTIONS[how].split()]
        )  # fmt: skip
        self._blocked[(proto, port)] = how

    def unblock_all(self) -> None:
        self._exec_ok([NFT, "flush", "chain", "inet", TABLE, "input"])
        self._blocked.clear()

    @property
    def blocked(self) -> dict[tuple[str, int], str]:
        return dict(self._blocked)

    def exec_command(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` prefixed to run inside the namespace."""
        return [IP, "netns", "exec", self.name, *cmd]

    def run(
        self, cmd: Sequence[str], timeout: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace and wait (bounded) for it."""
        return subprocess.run(
            self.exec_command(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `cmd` inside the namespace; it is killed by close()."""
        process: subprocess.Popen[bytes] = subprocess.Popen(
            self.exec_command(cmd), **kwargs
        )
        self._processes.append(process)
        return process

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self._processes.clear()
        if self._created:
            subprocess.run(
                [IP, "netns", "del", self.name],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
            # The veth pair goes with the namespace; this is in case it didn't.
            subprocess.run(
                [IP, "link", "del", self.host_if],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
            self._created = False
        leftovers.forget(self._record)
        self._record = None
        _LIVE.discard(self)

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoopbackFilter:
    """An nftables table of our own on the host that drops TCP to one
    loopback `ip:port` arriving on `lo` (a filtered port without a
    namespace). `how` as for Netns.block_port."""

    def __init__(self, ip: str, port: int, how: BlockHow = "drop") -> None:
        if not is_loopback(ip) or ip in ("127.0.0.1", "::1"):
            raise ValueError(
                "LoopbackFilter takes a dedicated 127.x.y.z address, not 127.0.0.1"
            )
        if how not in _RULE_ACTIONS:
            raise ValueError(f"how must be one of {sorted(_RULE_ACTIONS)}")
        self.ip = ip
        self.port = port
        self.how = how
        self.table = f"netlab_{secrets.token_hex(4)}"
        self._created = False
        self._record: Path | None = None

    def create(self) -> LoopbackFilter:
        family = "ip6" if ":" in self.ip else "ip"
        _LIVE_FILTERS.add(self)
        self._record = leftovers.record("nft", table=self.table)
        _run(
            [NFT, "-f", "-"],
            input=(
                f"table inet {self.table} {{\n"
                "  chain input {\n"
                "    type filter hook input priority 0; policy accept;\n"
                f'    iifname "lo" {family} daddr {self.ip} tcp dport {int(self.port)} '
                f"{_RULE_ACTIONS[self.how]}\n"
                "  }\n"
                "}\n"
            ),
        )
        self._created = True
        return self

    def close(self) -> None:
        if self._created:
            subprocess.run(
                [NFT, "delete", "table", "inet", self.table],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
            self._created = False
        leftovers.forget(self._record)
        self._record = None
        _LIVE_FILTERS.discard(self)

    def __enter__(self) -> LoopbackFilter:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()


_LIVE: set[Netns] = set()
_LIVE_FILTERS: set[LoopbackFilter] = set()


@atexit.register
def _close_leftovers() -> None:
    for ns in list(_LIVE):
        ns.close()
    for f in list(_LIVE_FILTERS):
        f.close()
