"""`RunSettings`: what one run needs to know, built once per run.

The module builds it from its config and the Synapse snapshot
(`settings_for_module`); the `check` command builds the same type from its
arguments. Nothing downstream reads the module config or the snapshot for
these values.
"""

from __future__ import annotations

import attr

from synapse_fedhealth.net.addresses import FederationIpRanges

DEFAULT_CERT_EXPIRY_WARNING_DAYS = 14


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class RunSettings:
    server_name: str
    timeout_s: float  # the wall-clock budget of the whole run
    cert_expiry_warning_days: int = DEFAULT_CERT_EXPIRY_WARNING_DAYS
    ca_files: tuple[str, ...] = ()  # empty: the system trust store
    dns_servers: tuple[str, ...] = ()  # empty: the nameservers of /etc/resolv.conf
    user_agent: str = "Synapse/unknown"
    notary_check: bool = True
    # This homeserver's ip_range_blacklist / ip_range_whitelist; None where
    # there is no homeserver (the `check` command): Synapse's defaults then
    # stand in, through `net.addresses.classify_address`.
    ip_ranges: FederationIpRanges | None = None


def trust_files(
    tls_ca_file: str | None, federation_custom_ca_list: tuple[str, ...]
) -> tuple[str, ...]:
    """The CA files peers' verdicts are judged with (SPEC 2.1 `tls_ca_file`):
    the module's own, else Synapse's federation_custom_ca_list, else none
    (the system store)."""
    if tls_ca_file:
        return (tls_ca_file,)
    return tuple(federation_custom_ca_list)
