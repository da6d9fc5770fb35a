"""Matrix server names, IP literals and certificate-name matching.

The server-name grammar is the Matrix spec's appendix with Synapse's semantics
(`synapse.util.stringutils.parse_and_validate_server_name`), reimplemented so
that nothing here imports Synapse (the `check` command must start without it).
Every other module parses names and IP literals through this one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import attr

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Synapse's approximation of RFC 1035 2.3.1 (its VALID_HOST_REGEX); "\Z", not
# "$", so a trailing newline does not sneak through.
VALID_HOST_REGEX = re.compile(r"\A[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*\Z")
_PORT_RE = re.compile(r"\A[0-9]{1,5}\Z")  # spec appendix: port = 1*5DIGIT

MAX_SERVER_NAME_LENGTH = 230
MAX_DNS_LABEL_LENGTH = 63  # RFC 1035: longer labels cannot exist in DNS
# The spec's grammar (appendix, server name): dns-name = 1*255 dns-char.
MAX_HOSTNAME_LENGTH = 255

# What a ServerNameError is about, for callers that word it themselves.
EMPTY = "empty"
BAD_PORT = "bad_port"
PORT_RANGE = "port_range"
BAD_IPV6 = "bad_ipv6"
BAD_HOST = "bad_host"
LONG_LABEL = "long_label"
LONG_NAME = "long_name"


class ServerNameError(ValueError):
    """The server name does not follow the grammar; str() says why."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerName:
    host: str  # without brackets for IPv6 literals
    port: int | None
    ip: IpAddress | None

    @property
    def written_host(self) -> str:
        """The host as the name spells it: IPv6 literals in brackets."""
        return (
            f"[{self.host}]"
            if isinstance(self.ip, ipaddress.IPv6Address)
            else self.host
        )


def parse_server_name(server_name: str, *, strict: bool = True) -> ServerName:
    """Split and validate a server name; raises ServerNameError with the reason.

    Splits as Synapse does (a name ending in "]" has no port, else the port
    follows the last ":"), and accepts what Synapse accepts except ports that
    are not ASCII digits in 1-65535 (Synapse lets "+80" or 70000 through; no
    connection can use them). `strict` adds the spec's and DNS's limits,
    which Synapse does not check: at most 5 port digits, labels of at most 63
    characters.
    """
    if not server_name:
        raise ServerNameError("the server name is empty", EMPTY)
    host, port_text = server_name, None
    if not server_name.endswith("]"):
        head, sep, tail = server_name.rpartition(":")
        if sep:
            host, port_text = head, tail
    port = None if port_text is None else _parse_port(server_name, port_text, strict)
    if host.startswith("["):
        if not host.endswith("]"):
            raise ServerNameError(
                "unexpected text after the IPv6 address"
                if "]" in host
                else "mismatched [...] around the IPv6 address",
                BAD_IPV6,
            )
        ip6 = _parse_ipv6(host[1:-1])
        if ip6 is None:
            raise ServerNameError(
                f"{host[1:-1]!r} is not a valid IPv6 address", BAD_IPV6
            )
        return ServerName(host[1:-1], port, ip6)
    if ":" in host:
        raise ServerNameError("an IPv6 address must be written in [brackets]", BAD_HOST)
    if len(host) > MAX_HOSTNAME_LENGTH:
        # Checked in every mode: no peer can look such a name up.
        raise ServerNameError(
            f"the host is {len(host)} characters long; a server name's host "
            f"has at most {MAX_HOSTNAME_LENGTH}",
            LONG_NAME,
        )
    if not VALID_HOST_REGEX.match(host):
        raise ServerNameError(
            "the host may contain only letters, digits, '-' and non-empty "
            "dot-separated labels",
            BAD_HOST,
        )
    try:
        return ServerName(host, port, ipaddress.IPv4Address(host))
    except ValueError:
        pass
    long_labels = [x for x in host.split(".") if len(x) > MAX_DNS_LABEL_LENGTH]
    if strict and long_labels:
        raise ServerNameError(
            f"the label {long_labels[0][:20]}... is longer than "
            f"{MAX_DNS_LABEL_LENGTH} characters, which DNS cannot hold",
            LONG_LABEL,
        )
    return ServerName(host, port, None)


def _parse_port(server_name: str, port_text: str, strict: bool) -> int:
    if server_name.startswith("[") and "]" in port_text:
        # "[::1]x": the split found a colon inside the brackets.
        raise ServerNameError("unexpected text after the IPv6 address", BAD_PORT)
    digits = _PORT_RE.match(port_text) if strict else port_text.isascii()
    if not (digits and port_text.isdigit()):
        raise ServerNameError(
            f"the port {port_text!r} is not a number from 1 to 65535", BAD_PORT
        )
    if not 0 < int(port_text) < 65536:
        raise ServerNameError(
            f"the port {port_text!r} is not a number from 1 to 65535", PORT_RANGE
        )
    return int(port_text)


def _parse_ipv6(text: str) -> ipaddress.IPv6Address | None:
    # A zone index ("fe80::1%eth0") means nothing to peers, and Synapse
    # refuses it in a server name.
    if "%" in text:
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


_SYNAPSE_WORDING = {
    EMPTY: "empty server name",
    BAD_PORT: "invalid port in {name!r}",
    PORT_RANGE: "port out of range in {name!r}",
    BAD_IPV6: "{name!r} is not a valid IPv6 literal",
    BAD_HOST: "{name!r} has an invalid format",
    LONG_NAME: "the host of {name:.40}... is longer than "
    f"{MAX_HOSTNAME_LENGTH} characters",
}


def parse_and_validate_server_name(server_name: str) -> tuple[str, int | None]:
    """Split into (host, port), as Synapse's function of the same name does.

    IPv6 literals keep their brackets. Raises ServerNameError (a ValueError)
    when invalid, worded as discovery reports it.
    """
    try:
        name = parse_server_name(server_name, strict=False)
    except ServerNameError as e:
        raise ServerNameError(
            _SYNAPSE_WORDING[e.kind].format(name=server_name), e.kind
        ) from None
    return name.written_host, name.port


def bare_host(host: str) -> str:
    """`host` without the brackets of an IPv6 literal."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def parse_ip(text: str, *, zone_ok: bool = False) -> IpAddress | None:
    """The IP address `text` spells, or None when it is not an IP literal.

    An IPv6 address may stand in one pair of brackets; an IPv4-mapped IPv6
    address is its IPv4 address (that is where a connection goes). A zone
    index ("fe80::1%eth0") is dropped with `zone_ok` (bind addresses may carry
    one); otherwise such text is no IP literal, since it means nothing to peers.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        if not zone_ok:
            return None
        text = text.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_ip_literal(host: str) -> bool:
    """An IPv4 address, or an IPv6 one (bare or in one pair of brackets)."""
    return parse_ip(host) is not None


def format_address(ip: str, port: int) -> str:
    """ "ip:port", with IPv6 in brackets ("[::1]:8448")."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def dns_name_matches(host: str, pattern: str) -> bool:
    """RFC 6125 matching of a DNS name against a certificate's DNS name: a "*"
    may stand for exactly the whole left-most label, as service_identity allows."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if not pattern.startswith("*."):
        return host == pattern
    first, dot, rest = host.partition(".")
    return bool(dot) and bool(first) and rest == pattern[2:]


def names_cover_host(names: Iterable[str], host: str) -> bool:
    """Whether a certificate with these subject alternative names (DNS names
    and IP addresses as text) is valid for `host`, as service_identity (and so
    Twisted and Synapse) decide: SANs only, no fallback to the subject CN."""
    ip = parse_ip(host)
    if ip is not None:
        return any(parse_ip(name) == ip for name in names)
    return any(dns_name_matches(host, name) for name in names if parse_ip(name) is None)
