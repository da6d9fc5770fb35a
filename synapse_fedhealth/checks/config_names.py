"""Hosts and bind addresses: "could this be public?" and "who can reach it?".

Pure helpers for the config checks; names and IP literals are parsed by
`synapse_fedhealth.matrix_names`.
"""

from __future__ import annotations

import enum

from synapse_fedhealth.matrix_names import parse_ip

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


def non_public_reason(host: str) -> str | None:
    """Why no remote server could reach `host`, or None when it could be public.

    `host` is a DNS name or an IP literal (brackets allowed).
    """
    ip = parse_ip(host.strip(), zone_ok=True)
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
    ip = parse_ip(address.strip(), zone_ok=True)
    if ip is None:
        return BindScope.UNKNOWN
    if ip.is_unspecified:
        return BindScope.WILDCARD
    return BindScope.PUBLIC if ip.is_global else BindScope.LOCAL
