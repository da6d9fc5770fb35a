"""Static checks of the homeserver config (SPEC 4.1).

`lint_config` is pure: it reads the snapshot and, for the TLS listeners, the
certificate files (through `pem_files.FILES`, which parses a file only when
it changed); it never touches the network or reads the clock. Each
problem is one result (so start-up logs one line per problem); a check with
no problem gives one `ok`, and one that does not apply gives one `skip`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import urllib.parse
from collections.abc import Callable

import attr

from synapse_fedhealth.check_ids import Family, ids_of
from synapse_fedhealth.checks import config_listeners
from synapse_fedhealth.checks.config_names import non_public_reason
from synapse_fedhealth.homeserver import HomeserverSnapshot
from synapse_fedhealth.matrix_names import (
    MAX_SERVER_NAME_LENGTH,
    ServerNameError,
    parse_ip,
    parse_server_name,
)
from synapse_fedhealth.report import CheckResult, fail, ok, warn

logger = logging.getLogger(__name__)

SERVER_NAME = "config.server_name"
FEDERATION_LISTENER = config_listeners.FEDERATION_LISTENER
X_FORWARDED = config_listeners.X_FORWARDED
TLS_LISTENER = config_listeners.TLS_LISTENER
WELL_KNOWN = config_listeners.WELL_KNOWN
PUBLIC_BASEURL = "config.public_baseurl"
FEDERATION_RESTRICTIONS = "config.federation_restrictions"
OUTBOUND_TLS = "config.outbound_tls"
SIGNING_KEY = "config.signing_key"

CONFIG_CHECK_IDS: tuple[str, ...] = ids_of(Family.CONFIG)

MS_PER_HOUR = 60 * 60 * 1000
# Peers cache our keys until valid_until_ts = now + key_refresh_interval; the
# spec's key checks want that between one hour and seven days ahead.
MIN_KEY_REFRESH_INTERVAL_MS = MS_PER_HOUR
MAX_KEY_REFRESH_INTERVAL_MS = 7 * 24 * MS_PER_HOUR


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class LintSettings:
    now: float  # epoch seconds, injected: checks never read the clock
    cert_expiry_warning_days: int = 14
    # CA bundle that judges our certificate chain; None: the system trust store.
    tls_ca_file: str | None = None
    # Set when a network run has shown which listener the public path reaches.
    public_listener_index: int | None = None


def check_server_name(snapshot: HomeserverSnapshot) -> list[CheckResult]:
    server_name = snapshot.server_name
    details = {"server_name": server_name}
    if len(server_name) > MAX_SERVER_NAME_LENGTH:
        return [
            fail(
                SERVER_NAME,
                f"server_name is {len(server_name)} characters long; at most "
                f"{MAX_SERVER_NAME_LENGTH} leave room for user and room IDs",
                fix="Choose a shorter `server_name` in homeserver.yaml (it cannot be "
                "changed once users and rooms exist; a new server is needed).",
                details=details,
            )
        ]
    try:
        name = parse_server_name(server_name)
    except ServerNameError as e:
        return [
            fail(
                SERVER_NAME,
                f"server_name {server_name!r} is not a valid server name: {e}",
                fix="Set `server_name` in homeserver.yaml to a DNS name, optionally "
                "with :port, e.g. `server_name: example.com`.",
                details=details,
            )
        ]
    results = []
    if server_name != server_name.lower():
        results.append(
            warn(
                SERVER_NAME,
                f"server_name {server_name!r} has upper-case letters; Matrix IDs are "
                "case-sensitive, so peers and clients that lower-case it disagree",
                fix=f"Use `server_name: {server_name.lower()}` in homeserver.yaml "
                "(only possible on a new server).",
                details=details,
            )
        )
    reason = non_public_reason(name.host)
    if reason is not None:
        results.append(
            warn(
                SERVER_NAME,
                f"server_name {server_name!r} is {reason}: servers on the internet "
                "cannot reach it (fine only for a private federation)",
                fix="Use a public DNS name you control as `server_name` in "
                "homeserver.yaml (delegate with .well-known if Synapse runs elsewhere).",
                details={**details, "reason": reason},
            )
        )
    if results:
        return results
    return [ok(SERVER_NAME, f"server_name {server_name!r} is a valid public name")]


BASEURL_FIX_EXAMPLE = "public_baseurl: https://matrix.example.com/"


def check_public_baseurl(snapshot: HomeserverSnapshot) -> list[CheckResult]:
    baseurl = snapshot.public_baseurl
    if baseurl is None:
        return [
            warn(
                PUBLIC_BASEURL,
                f"public_baseurl is not set: Synapse assumes https://{snapshot.server_name}/ "
                "and serves no /.well-known/matrix/client",
                fix=f"Set `public_baseurl` in homeserver.yaml to the URL clients use, "
                f"e.g. `{BASEURL_FIX_EXAMPLE}`.",
                details={"public_baseurl": None},
            )
        ]
    details = {"public_baseurl": baseurl}
    try:
        url = urllib.parse.urlsplit(baseurl)
        host = url.hostname or ""
    except ValueError:
        url, host = None, ""
    if url is None or not host:
        return [
            warn(
                PUBLIC_BASEURL,
                f"public_baseurl {baseurl!r} is not an absolute URL",
                fix=f"Set `public_baseurl` to an absolute https URL, e.g. `{BASEURL_FIX_EXAMPLE}`.",
                details=details,
            )
        ]
    results = []
    if url.scheme != "https":
        results.append(
            warn(
                PUBLIC_BASEURL,
                f"public_baseurl {baseurl!r} is not https: clients would send "
                "passwords and tokens in clear text",
                fix="Serve the client API over TLS through your reverse proxy and set "
                f"`public_baseurl: https://{url.netloc}{url.path or '/'}`.",
                details=details,
            )
        )
    server_host = _server_host_or_none(snapshot.server_name)
    server_is_public = (
        server_host is not None and non_public_reason(server_host) is None
    )
    reason = non_public_reason(host)
    if server_is_public and reason is not None:
        results.append(
            warn(
                PUBLIC_BASEURL,
                f"public_baseurl points at {host}, {reason}, but the server_name is "
                "public: clients elsewhere cannot reach it",
                fix=f"Set `public_baseurl` to the public URL of the reverse proxy, e.g. "
                f"`{BASEURL_FIX_EXAMPLE}`.",
                details={**details, "host": host, "reason": reason},
            )
        )
    elif server_is_public and parse_ip(host, zone_ok=True) is not None:
        results.append(
            warn(
                PUBLIC_BASEURL,
                f"public_baseurl points at the IP address {host}: clients cannot "
                "validate a certificate for it, and it breaks when the address changes",
                fix=f"Use a DNS name in `public_baseurl`, e.g. `{BASEURL_FIX_EXAMPLE}`.",
                details={**details, "host": host},
            )
        )
    if results:
        return results
    return [ok(PUBLIC_BASEURL, f"public_baseurl is {baseurl}", details=details)]


def _server_host_or_none(server_name: str) -> str | None:
    try:
        return parse_server_name(server_name).host
    except ServerNameError:
        return None


def check_federation_restrictions(snapshot: HomeserverSnapshot) -> list[CheckResult]:
    if snapshot.federation_disabled:
        # The runner turns this into verdict `disabled`: not a problem to fix.
        return [
            ok(
                FEDERATION_RESTRICTIONS,
                "federation is disabled on purpose (federation_domain_whitelist: [])",
                details={"federation_disabled": True},
            )
        ]
    results = []
    whitelist = snapshot.federation_domain_whitelist
    if whitelist:
        shown = ", ".join(whitelist[:5]) + (", ..." if len(whitelist) > 5 else "")
        results.append(
            warn(
                FEDERATION_RESTRICTIONS,
                f"federation is limited to {len(whitelist)} domain(s) by "
                f"federation_domain_whitelist ({shown})",
                fix="Remove `federation_domain_whitelist` from homeserver.yaml to "
                "federate with everyone, or add the domains you need.",
                details={"federation_domain_whitelist": list(whitelist)},
            )
        )
    if not snapshot.send_federation:
        results.append(
            warn(
                FEDERATION_RESTRICTIONS,
                "send_federation is false and federation_sender_instances names no "
                "worker: outgoing federation stops unless a legacy "
                "synapse.app.federation_sender worker runs",
                fix="Remove `send_federation: false` from homeserver.yaml, or list "
                "your federation sender workers in `federation_sender_instances`.",
                details={
                    "send_federation": False,
                    "federation_sender_instances": list(
                        snapshot.federation_sender_instances or ()
                    ),
                },
            )
        )
    restricted = snapshot.outbound_federation_restricted_to
    if restricted is not None and not restricted:
        results.append(
            warn(
                FEDERATION_RESTRICTIONS,
                "outbound_federation_restricted_to is an empty list: no process may "
                "make outbound federation requests",
                fix="Remove `outbound_federation_restricted_to` from homeserver.yaml, or "
                "list the workers (in instance_map) that may reach other servers.",
                details={"outbound_federation_restricted_to": []},
            )
        )
    if snapshot.federation_client_minimum_tls_version == "1.3":
        results.append(
            warn(
                FEDERATION_RESTRICTIONS,
                "federation_client_minimum_tls_version is 1.3: servers that offer "
                "only TLS 1.2 cannot be reached",
                fix="Set `federation_client_minimum_tls_version: 1.2` in homeserver.yaml "
                "(or remove it).",
                details={"federation_client_minimum_tls_version": "1.3"},
            )
        )
    if results:
        return results
    details: dict[str, object] = {"federation_disabled": False}
    summary = "federation is open to all servers"
    if restricted:
        details["outbound_federation_restricted_to"] = list(restricted)
        summary += f"; outbound requests go through {', '.join(restricted)}"
    return [ok(FEDERATION_RESTRICTIONS, summary, details=details)]


def check_outbound_tls(snapshot: HomeserverSnapshot) -> list[CheckResult]:
    results = []
    if not snapshot.federation_verify_certificates:
        results.append(
            warn(
                OUTBOUND_TLS,
                "federation_verify_certificates is false: this server accepts any "
                "certificate from peers, so their traffic can be intercepted",
                fix="Remove `federation_verify_certificates: false` from homeserver.yaml "
                "(trust a private CA with `federation_custom_ca_list` instead).",
                details={"federation_verify_certificates": False},
            )
        )
    if snapshot.federation_custom_ca_list is not None:
        results.append(
            warn(
                OUTBOUND_TLS,
                "federation_custom_ca_list replaces the public CAs: this server can "
                "reach only peers whose certificates those files issued",
                fix="Remove `federation_custom_ca_list` from homeserver.yaml unless this "
                "is a private federation; it cannot be combined with the public roots.",
                details={
                    "federation_custom_ca_list": list(
                        snapshot.federation_custom_ca_list
                    )
                },
            )
        )
    if results:
        return results
    return [ok(OUTBOUND_TLS, "peers' certificates are verified against the public CAs")]


def banned_signing_keys() -> tuple[str, ...]:
    """Synapse's list of signing keys whose private half is public
    (CVE-2026-24044), or none on a Synapse that predates it."""
    try:
        from synapse.crypto.keyring import BANNED_SERVER_SIGNING_KEYS
    except ImportError:
        return ()
    return tuple(BANNED_SERVER_SIGNING_KEYS)


def _key_bytes(text: str) -> bytes | None:
    """Decoded key bytes, whether `text` is padded or unpadded base64.

    Comparing the decoded bytes is what makes the ban match: Synapse's list is
    padded base64, the key it compares with is unpadded, so comparing the
    strings never matches."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def publicly_known_keys(
    snapshot: HomeserverSnapshot, banned: tuple[str, ...]
) -> list[str]:
    """Key ids of our signing keys that are on the banned list."""
    banned_bytes = {b for b in map(_key_bytes, banned) if b is not None}
    return [
        key.key_id
        for key in snapshot.signing_keys
        if _key_bytes(key.verify_key_base64) in banned_bytes
    ]


def check_signing_key(
    snapshot: HomeserverSnapshot, banned: tuple[str, ...] | None = None
) -> list[CheckResult]:
    results = []
    public = publicly_known_keys(
        snapshot, banned_signing_keys() if banned is None else banned
    )
    if public:
        results.append(
            fail(
                SIGNING_KEY,
                f"signing key {', '.join(public)} is publicly known: its private "
                "half was generated from a fixed seed, so anyone can sign as this "
                "server (CVE-2026-24044)",
                fix="Rotate the key now: generate a new one with `generate_signing_key` "
                "(or `python -m synapse.app.homeserver -c homeserver.yaml "
                "--generate-keys` after moving the old file away), point "
                "`signing_key_path` at it, and list the old key under "
                "`old_signing_keys` with an `expired_ts` of now so peers stop "
                "trusting it.",
                details={"reason": "banned_key", "key_ids": public},
            )
        )
    if snapshot.signing_key_error is not None or not snapshot.signing_keys:
        error = snapshot.signing_key_error or "the signing key file holds no key"
        results.append(
            fail(
                SIGNING_KEY,
                f"no signing key is loaded: {error}",
                fix="Point `signing_key_path` in homeserver.yaml at the server's key "
                "(create one with `python -m synapse.app.homeserver -c homeserver.yaml "
                "--generate-keys`; keep the old one if the server already federated).",
                details={"error": error},
            )
        )
    interval = snapshot.key_refresh_interval_ms
    if not MIN_KEY_REFRESH_INTERVAL_MS <= interval <= MAX_KEY_REFRESH_INTERVAL_MS:
        too = "short" if interval < MIN_KEY_REFRESH_INTERVAL_MS else "long"
        results.append(
            warn(
                SIGNING_KEY,
                f"key_refresh_interval is {interval / MS_PER_HOUR:g} h, too {too}: "
                "peers expect our keys to stay valid between 1 h and 7 d ahead",
                fix="Set `key_refresh_interval: 1d` in homeserver.yaml (or remove it).",
                details={"key_refresh_interval_ms": interval},
            )
        )
    if results:
        return results
    key_ids = [k.key_id for k in snapshot.signing_keys]
    return [
        ok(
            SIGNING_KEY,
            f"signing key {', '.join(key_ids)} is loaded",
            details={"key_ids": key_ids, "key_refresh_interval_ms": interval},
        )
    ]


def lint_config(
    snapshot: HomeserverSnapshot, settings: LintSettings
) -> list[CheckResult]:
    """Every config check, in CONFIG_CHECK_IDS order; never raises."""
    checks: list[tuple[str, Callable[[], list[CheckResult]]]] = [
        (SERVER_NAME, lambda: check_server_name(snapshot)),
        (
            FEDERATION_LISTENER,
            lambda: config_listeners.check_federation_listener(snapshot),
        ),
        (
            X_FORWARDED,
            lambda: config_listeners.check_x_forwarded(
                snapshot, settings.public_listener_index
            ),
        ),
        (
            TLS_LISTENER,
            lambda: config_listeners.check_tls_listener(
                snapshot,
                now=settings.now,
                warning_days=settings.cert_expiry_warning_days,
                ca_file=settings.tls_ca_file,
            ),
        ),
        (WELL_KNOWN, lambda: config_listeners.check_well_known(snapshot)),
        (PUBLIC_BASEURL, lambda: check_public_baseurl(snapshot)),
        (FEDERATION_RESTRICTIONS, lambda: check_federation_restrictions(snapshot)),
        (OUTBOUND_TLS, lambda: check_outbound_tls(snapshot)),
        (SIGNING_KEY, lambda: check_signing_key(snapshot)),
    ]
    results: list[CheckResult] = []
    for check_id, run in checks:
        try:
            results.extend(run())
        except Exception as e:
            # A bug in a check must not hide the others or stop Synapse, and
            # must not put a traceback in Synapse's log: one line, and a
            # `fail` with reason "error" for this check only.
            logger.warning(
                "config check %s raised %s: %s", check_id, type(e).__name__, e
            )
            results.append(
                fail(
                    check_id,
                    f"the check raised an internal error ({type(e).__name__}: {e})"[
                        :300
                    ],
                    fix="This is a bug in synapse-fedhealth; the other checks are "
                    "unaffected. Please report it with this summary.",
                    details={"reason": "error", "error": repr(e)[:300]},
                )
            )
    return results
