"""Addresses on the loopback network (127.0.0.0/8) for the lab's servers.

Linux routes all of 127.0.0.0/8 to `lo`, so any address in it can be bound
without configuration. Each server of the lab takes a random address from a
range the rest of the system doesn't use, so that concurrent test runs on the
same machine, and the usual 127.0.0.1 / 127.0.0.53 listeners, don't collide.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterable

# 127.64.0.0 - 127.191.255.255: far from 127.0.0.1 and 127.0.0.53.
_FIRST_OCTET2 = 64
_LAST_OCTET2 = 191
PICK_ATTEMPTS = 200


class NoFreeAddress(Exception):
    """No loopback address with the wanted ports free was found."""


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def random_loopback_ip(rng: random.Random | None = None) -> str:
    r = rng or random.SystemRandom()
    return (
        f"127.{r.randint(_FIRST_OCTET2, _LAST_OCTET2)}."
        f"{r.randint(0, 255)}.{r.randint(2, 254)}"
    )


def port_free(ip: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether `port` can be bound on `ip` now (for TCP: nothing listens)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
        return True


def free_loopback_ip(
    ports: Iterable[int] = (443,), udp_ports: Iterable[int] = ()
) -> str:
    """A random loopback address on which the given TCP (and UDP) ports are
    free. Raises NoFreeAddress after a bounded number of attempts."""
    tcp = list(ports)
    udp = list(udp_ports)
    for _ in range(PICK_ATTEMPTS):
        ip = random_loopback_ip()
        if all(port_free(ip, p) for p in tcp) and all(
            port_free(ip, p, socket.SOCK_DGRAM) for p in udp
        ):
            return ip
    raise NoFreeAddress(f"no loopback address with TCP {tcp} and UDP {udp} free")


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port on `ip` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
        return port


def host_port(ip: str, port: int) -> str:
    """`ip:port`, with brackets for IPv6."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
