"""Server names, hosts and bind addresses: grammar and "could this be public?".

Pure helpers for the config checks. The server-name grammar follows the
Matrix spec's appendix with Synapse's semantics
(`synapse.util.stringutils.parse_and_validate_server_name`), reimplemented so
that this module never imports Synapse.
"""

from __future__ import annotations

import enum
import ipaddress
import re

import attr

# Synapse's approximation of RFC 1035 2.3.1 (VALID_HOST_REGEX); "\Z", not "$",
# so a trailing newline does not sneak through.
_VALID_HOST_RE = re.compile(r"\A[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*\Z")
_PORT_RE = re.compile(r"\A[0-9]{1,5}\Z")  # spec appendix: port = 1*5DIGIT

MAX_SERVER_NAME_LENGTH = 230
MAX_DNS_LABEL_LENGTH = 63  # RFC 1035: longer labels cannot exist in DNS

# Names that no public resolver answers for, so no remote server can reach them.
# `.test` and `.example` (RFC 6761/2606) are deliberately not listed: they are
# what private test federations use, and those admins know.
NON_PUBLIC_NAMES = frozenset({"localhost", "localhost.localdomain"})
NON_PUBLIC_SUFFIXES = (
    ".localhost",
    ".local",
    ".internal",
    ".localdomain",
    ".lan",
    ".home.arpa",
    ".intranet",
    ".corp",
    ".private",
    ".invalid",
)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerName:
    host: str  # without brackets for IPv6 literals
    port: int | None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None


class ServerNameError(ValueError):
    """The server name does not follow the grammar."""


def parse_server_name(server_name: str) -> ServerName:
    """Split and validate a server name; raises ServerNameError with the reason."""
    if not server_name:
        raise ServerNameError("the server name is empty")
    port_text: str | None = None
    if server_name.startswith("["):
        host_part, sep, rest = server_name[1:].partition("]")
        if not sep:
            raise ServerNameError("mismatched [...] around the IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise ServerNameError("unexpected text after the IPv6 address")
            port_text = rest[1:]
        try:
            ip6 = ipaddress.IPv6Address(host_part)
        except ValueError:
            raise ServerNameError(
                f"{host_part!r} is not a valid IPv6 address"
            ) from None
        return ServerName(host_part, _parse_port(port_text), ip6)

    host, sep, port_part = server_name.rpartition(":")
    if not sep:
        host, port_part = server_name, ""
    elif ":" in host:
        raise ServerNameError("an IPv6 address must be written in [brackets]")
    else:
        port_text = port_part
    if not _VALID_HOST_RE.match(host):
        raise ServerNameError(
            "the host may contain only letters, digits, '-' and non-empty "
            "dot-separated labels"
        )
    ip: ipaddress.IPv4Address | None = None
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        long_labels = [x for x in host.split(".") if len(x) > MAX_DNS_LABEL_LENGTH]
        if long_labels:
            raise ServerNameError(
                f"the label {long_labels[0][:20]}... is longer than "
                f"{MAX_DNS_LABEL_LENGTH} characters, which DNS cannot hold"
            ) from None
    return ServerName(host, _parse_port(port_text), ip)


def _parse_port(port_text: str | None) -> int | None:
    if port_text is None:
        return None
    if not _PORT_RE.match(port_text) or not 0 < int(port_text) < 65536:
        raise ServerNameError(f"the port {port_text!r} is not a number from 1 to 65535")
    return int(port_text)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address (brackets and IPv4-mapped IPv6 unwrapped), or None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def non_public_reason(host: str) -> str | None:
    """Why no remote server could reach `host`, or None when it could be public.

    `host` is a DNS name or an IP literal (brackets allowed).
    """
    ip = parse_ip(host)
    if ip is not None:
        if ip.is_loopback:
            return "a loopback address"
        if ip.is_unspecified:
            return "the unspecified address"
        if not ip.is_global:
            return "a private or reserved address"
        return None
    name = host.lower().rstrip(".")
    if name in NON_PUBLIC_NAMES:
        return "a local-only name"
    for suffix in NON_PUBLIC_SUFFIXES:
        if name.endswith(suffix):
            return f"a name under {suffix}, which public DNS does not serve"
    if "." not in name:
        return "a single-label name, which public DNS does not serve"
    return None


class BindScope(enum.Enum):
    """Who can reach a listener, judged from one bind address."""

    LOCAL = "local"  # loopback, private, link-local, CGNAT: a proxy on our side
    WILDCARD = "wildcard"  # every interface, so possibly the internet too
    PUBLIC = "public"  # a globally routable address
    UNIX = "unix"  # a unix socket: only a local proxy
    UNKNOWN = "unknown"  # not an IP address (Synapse would fail to bind it)


WILDCARD_BIND_ADDRESSES = frozenset({"0.0.0.0", "::", "*", ""})


def bind_scope(address: str) -> BindScope:
    if address.strip() in WILDCARD_BIND_ADDRESSES:
        return BindScope.WILDCARD
    if address.strip().lower() == "localhost":
        return BindScope.LOCAL
    ip = parse_ip(address)
    if ip is None:
        return BindScope.UNKNOWN
    if ip.is_unspecified:
        return BindScope.WILDCARD
    return BindScope.PUBLIC if ip.is_global else BindScope.LOCAL


def host_matches_dns_pattern(host: str, pattern: str) -> bool:
    """RFC 6125 matching of a DNS name against a certificate name: a "*" may
    stand for exactly the whole leftmost label, as service_identity allows."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if not pattern.startswith("*."):
        return host == pattern
    first, dot, rest = host.partition(".")
    return bool(dot) and bool(first) and rest == pattern[2:]
