"""Which resolved addresses we may probe, and what peers will think of them."""

from __future__ import annotations

import enum
import ipaddress


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


def classify_address(address: str) -> AddressClass:
    ip = ipaddress.ip_address(address.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in _FORBIDDEN_NETWORKS):
        return AddressClass.FORBIDDEN
    if any(ip in net for net in _PRIVATE_NETWORKS):
        return AddressClass.PRIVATE
    return AddressClass.PUBLIC


def is_ip_literal(host: str) -> bool:
    """An IPv4 address, or an IPv6 one (bare or in one pair of brackets)."""
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        # Exactly one pair: "[::[]".strip("[]") would be "::".
        host = host[1:-1]
    if "%" in host:
        return False  # a zone index ("fe80::1%eth0") means nothing to peers
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def format_address(ip: str, port: int) -> str:
    """ "ip:port", with IPv6 in brackets ("[::1]:8448")."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
