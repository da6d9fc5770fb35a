"""Which resolved addresses we may probe, and what peers will think of them."""

from __future__ import annotations

import enum
import ipaddress

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


def classify_address(address: str) -> AddressClass:
    """Raises ValueError when `address` is not an IP address."""
    ip = parse_ip(address, zone_ok=True)
    if ip is None:
        raise ValueError(f"{address!r} is not an IP address")
    if any(ip in net for net in _FORBIDDEN_NETWORKS):
        return AddressClass.FORBIDDEN
    if any(ip in net for net in _PRIVATE_NETWORKS):
        return AddressClass.PRIVATE
    return AddressClass.PUBLIC
