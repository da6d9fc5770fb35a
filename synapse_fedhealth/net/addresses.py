"""Which resolved addresses we may probe, and what peers will think of them."""

from __future__ import annotations

import enum
import functools
import ipaddress

import attr

from synapse_fedhealth.matrix_names import format_address as format_address
from synapse_fedhealth.matrix_names import is_ip_literal as is_ip_literal
from synapse_fedhealth.matrix_names import parse_ip


class AddressClass(enum.Enum):
    PUBLIC = "public"
    # Loopback, RFC 1918, CGNAT, IPv6 ULA: refused by peers with Synapse's
    # default ip_range_blacklist, unless DNS is split-horizon or the
    # federation is private. We still probe them (we may be that private net).
    PRIVATE = "private"
    # 0.0.0.0/8, link-local, multicast, broadcast: peers refuse them and
    # probing them from inside a server is unsafe. Never connected to.
    FORBIDDEN = "forbidden"


_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # CGNAT
        "::1/128",
        "fc00::/7",  # unique local
    )
)
_FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",  # multicast
        "255.255.255.255/32",  # broadcast
        "::/128",
        "fe80::/10",
        "ff00::/8",  # multicast
    )
)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: IPv4-mapped
    (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach it."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def classify_address(address: str) -> AddressClass:
    """Raises ValueError when `address` is not an IP address. An IPv6
    address that reaches an IPv4 one (NAT64, 6to4, IPv4-mapped) is classed
    as that IPv4 address: 64:ff9b::7f00:1 is loopback."""
    ip = parse_ip(address, zone_ok=True)
    if ip is None:
        raise ValueError(f"{address!r} is not an IP address")
    if isinstance(ip, ipaddress.IPv6Address):
        ip = embedded_ipv4(ip) or ip
    if any(ip in net for net in _FORBIDDEN_NETWORKS):
        return AddressClass.FORBIDDEN
    if any(ip in net for net in _PRIVATE_NETWORKS):
        return AddressClass.PRIVATE
    return AddressClass.PUBLIC


@functools.lru_cache(maxsize=32)
def _networks(
    cidrs: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _in_ranges(address: str, cidrs: tuple[str, ...]) -> bool:
    ip = parse_ip(address, zone_ok=True)
    return ip is not None and any(ip in net for net in _networks(cidrs))


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class FederationIpRanges:
    """This homeserver's `ip_range_blacklist` / `ip_range_whitelist` as its
    federation client applies them (Synapse's `federation_ip_range_blocklist`
    and `_allowlist`). The ranges are Synapse's own sets, spelled as CIDRs:
    `generate_ip_set` already added the IPv4-mapped, IPv4-compatible and
    6to4 forms of each IPv4 range (and 0.0.0.0 and :: to the blocklist), so
    an address is matched as written, not through `embedded_ipv4`.
    """

    blocklist: tuple[str, ...]
    # Empty when the legacy `federation_ip_range_blacklist` is set: Synapse
    # then applies no whitelist to federation.
    allowlist: tuple[str, ...] = ()

    def allowed(self, address: str) -> bool:
        """`address` is inside the whitelist."""
        return _in_ranges(address, self.allowlist)

    def refuses(self, address: str, *, ip_literal: bool = False) -> bool:
        """Whether this homeserver's federation client refuses to connect to
        `address` (synapse.http.client `_is_ip_blocked`). `ip_literal`: the
        address is the destination's name itself, which Synapse's outer
        `BlocklistingAgentWrapper` checks against the blocklist alone."""
        if not _in_ranges(address, self.blocklist):
            return False
        return ip_literal or not self.allowed(address)
