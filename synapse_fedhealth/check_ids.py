"""Every check id, once, with the family that reports it and what it needs.

The runner's placeholders (a family that timed out or broke), the `check`
command's skip list and the docs test all derive from this registry.
"""

from __future__ import annotations

import enum

import attr


class Needs(enum.Flag):
    """What a check needs beyond the outside view any peer has."""

    OUTSIDE_VIEW = 0  # anyone can run it: the `check` command does
    CONFIG = enum.auto()  # this server's own config (or its echo resource)
    OUR_KEY = enum.auto()  # this server's signing key


class Family(enum.Enum):
    CONFIG = "config"  # static: start-up, every report, `lint`
    NETWORK = "network"  # discovery, connection, federation endpoints
    OUTSIDE = "insider"  # requests through the public client paths
    TARGETS = "insider (targets)"  # our key at the resolved targets
    NOTARY = "notary"
    SUPPORT = "insider (support)"  # the MSC1929 support well-known
    OUTBOUND = "outbound"  # reaching out as Synapse's own client does
    TRAFFIC = "traffic"  # real federation traffic seen by this process


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CheckSpec:
    id: str
    family: Family
    needs: Needs = Needs.OUTSIDE_VIEW


CHECKS: tuple[CheckSpec, ...] = (
    *(
        CheckSpec(f"config.{name}", Family.CONFIG, Needs.CONFIG)
        for name in (
            "server_name",
            "federation_listener",
            "x_forwarded",
            "tls_listener",
            "well_known",
            "public_baseurl",
            "federation_restrictions",
            "outbound_tls",
            "signing_key",
        )
    ),
    CheckSpec("discovery.well_known", Family.NETWORK),
    CheckSpec("discovery.well_known_consistency", Family.NETWORK),
    CheckSpec("discovery.srv", Family.NETWORK),
    CheckSpec("discovery.addresses", Family.NETWORK),
    CheckSpec("discovery.targets", Family.NETWORK),
    CheckSpec("connection.reachable", Family.NETWORK),
    CheckSpec("tls.handshake", Family.NETWORK),
    CheckSpec("tls.certificate", Family.NETWORK),
    CheckSpec("federation.version", Family.NETWORK),
    CheckSpec("federation.keys", Family.NETWORK),
    # The echo resource that answers it is this server's own.
    CheckSpec("proxy.forwarded_headers", Family.OUTSIDE, Needs.CONFIG),
    CheckSpec("client.well_known", Family.OUTSIDE),
    CheckSpec("federation.key_matches_local", Family.TARGETS, Needs.OUR_KEY),
    CheckSpec("federation.signed_request", Family.TARGETS, Needs.OUR_KEY),
    CheckSpec("federation.notary", Family.NOTARY, Needs.OUR_KEY | Needs.CONFIG),
    CheckSpec("client.support_well_known", Family.SUPPORT),
    # Synapse's own outbound settings and records: only the module has them.
    CheckSpec("outbound.reach", Family.OUTBOUND, Needs.CONFIG),
    CheckSpec("outbound.destinations", Family.OUTBOUND, Needs.CONFIG),
    CheckSpec("federation.traffic", Family.TRAFFIC, Needs.CONFIG),
)

ALL_CHECK_IDS: tuple[str, ...] = tuple(spec.id for spec in CHECKS)


def ids_of(*families: Family) -> tuple[str, ...]:
    return tuple(spec.id for spec in CHECKS if spec.family in families)


def ids_needing_more_than_outside_view() -> tuple[str, ...]:
    """What the `check` command can't run from outside."""
    return tuple(spec.id for spec in CHECKS if spec.needs != Needs.OUTSIDE_VIEW)


# The families that run only on the process that runs background tasks.
NETWORK_RUN_FAMILIES = (
    Family.NETWORK,
    Family.OUTSIDE,
    Family.TARGETS,
    Family.NOTARY,
    Family.SUPPORT,
    Family.OUTBOUND,
    Family.TRAFFIC,
)
