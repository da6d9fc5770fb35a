"""The ONE place that reads Synapse's configuration.

It turns Synapse's config (the parsed config of a running homeserver, or the
raw YAML for the offline `lint` command) into a frozen `HomeserverSnapshot`:
the facts the checks need, and nothing else. Checks never reach back into
Synapse. Synapse's private config objects change between releases, so every
access to them lives here and is covered by tests against the installed
Synapse.
"""

from __future__ import annotations

import copy
import logging
import os
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attr

from synapse_fedhealth.net.addresses import FederationIpRanges

if TYPE_CHECKING:
    from typing import LiteralString

    from synapse.config.homeserver import HomeServerConfig
    from synapse.config.server import ListenerConfig
    from synapse.module_api import ModuleApi, Requester
    from twisted.internet import defer

logger = logging.getLogger("synapse_fedhealth")

DEFAULT_KEY_REFRESH_INTERVAL_MS = 24 * 60 * 60 * 1000
MAIN_PROCESS = "master"


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ListenerInfo:
    """One listener of this process, as Synapse would bind it."""

    index: int
    type: str  # "http", "metrics", "manhole", ...
    port: int | None = None  # None for a unix socket
    bind_addresses: tuple[str, ...] = ()
    unix_path: str | None = None
    tls: bool = False
    x_forwarded: bool = False
    resources: frozenset[str] = frozenset()
    tag: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None

    @property
    def label(self) -> str:
        """How an admin recognises this listener in homeserver.yaml."""
        if self.unix_path is not None:
            where = f"unix:{self.unix_path}"
        else:
            where = f"port {self.port}"
            if self.bind_addresses:
                where += " on " + ", ".join(self.bind_addresses)
        tls = " (TLS)" if self.tls else ""
        return f"listeners[{self.index}] ({self.type}, {where}{tls})"


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class SigningKeyInfo:
    """Our signing key: the private half is kept for signed requests only and
    never rendered (repr=False)."""

    key_id: str  # "ed25519:a_AbCd"
    verify_key_base64: str
    signing_key: Any = attr.ib(default=None, repr=False, eq=False)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class TrustedKeyServerInfo:
    server_name: str
    verify_keys: Mapping[str, str] | None = None  # key id -> unpadded base64


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class OriginRateLimit:
    """What Synapse's `rc_federation` lets one origin server do: `sleep_limit`
    requests per `window_ms` before it delays each (`sleep_delay`), and
    `concurrent` at a time before it queues the rest (logging each one).
    Defaults: Synapse's FederationRatelimitSettings."""

    window_ms: int = 1000
    sleep_limit: int = 10
    concurrent: int = 3


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class HomeserverSnapshot:
    server_name: str
    # None when public_baseurl is not set in the config (Synapse then assumes
    # https://<server_name>/).
    public_baseurl: str | None
    listeners: tuple[ListenerInfo, ...]
    worker_name: str | None = None  # None on the main process
    workers_configured: bool = False
    run_background_tasks: bool = True
    serve_server_wellknown: bool = False
    serve_client_wellknown: bool = False
    tls_certificate_file: str | None = None
    tls_private_key_file: str | None = None
    # None: no whitelist (federate with everyone); empty: federation disabled.
    federation_domain_whitelist: tuple[str, ...] | None = None
    send_federation: bool = True
    federation_sender_instances: tuple[str, ...] | None = None
    outbound_federation_restricted_to: tuple[str, ...] | None = None
    federation_client_minimum_tls_version: str = "1"
    federation_verify_certificates: bool = True
    federation_custom_ca_list: tuple[str, ...] | None = None
    signing_keys: tuple[SigningKeyInfo, ...] = ()
    signing_key_error: str | None = None
    key_refresh_interval_ms: int = DEFAULT_KEY_REFRESH_INTERVAL_MS
    trusted_key_servers: tuple[TrustedKeyServerInfo, ...] = ()
    # None where Synapse's ranges could not be read (they are then unknown,
    # not empty: nothing is judged by them).
    federation_ip_ranges: FederationIpRanges | None = None
    # rc_federation: how many requests one origin may send before Synapse
    # delays them; our signed probes are such an origin.
    own_origin_limit: OriginRateLimit = OriginRateLimit()
    config_files: tuple[str, ...] = ()

    @property
    def is_worker(self) -> bool:
        return self.worker_name is not None

    @property
    def federation_disabled(self) -> bool:
        """Federation switched off on purpose: an empty domain whitelist."""
        return self.federation_domain_whitelist is not None and not (
            self.federation_domain_whitelist
        )


def listener_from_synapse(index: int, listener: ListenerConfig) -> ListenerInfo:
    http = listener.http_options
    resources: set[str] = set()
    if http is not None:
        for res in http.resources:
            resources.update(res.names)
    port = getattr(listener, "port", None)
    return ListenerInfo(
        index=index,
        type=listener.type,
        port=port,
        bind_addresses=tuple(getattr(listener, "bind_addresses", ())),
        unix_path=getattr(listener, "path", None),
        tls=listener.is_tls(),
        x_forwarded=bool(http.x_forwarded) if http is not None else False,
        resources=frozenset(resources),
        tag=http.tag if http is not None else None,
    )


def _listeners_from_raw(raw_listeners: object) -> tuple[ListenerInfo, ...]:
    """Parse raw listener dicts with Synapse's own parser, so `lint` sees the
    defaults Synapse applies (bind addresses, x_forwarded on unix sockets)."""
    from synapse.config.server import parse_listener_def

    if not isinstance(raw_listeners, list):
        return ()
    # Deep copies: Synapse's parser appends to the lists it is given.
    return tuple(
        listener_from_synapse(i, parse_listener_def(i, copy.deepcopy(raw)))
        for i, raw in enumerate(raw_listeners)
    )


def _signing_key_info(keys: Iterable[Any]) -> tuple[SigningKeyInfo, ...]:
    from signedjson.key import encode_verify_key_base64, get_verify_key

    out = []
    for key in keys:
        verify_key = get_verify_key(key)
        out.append(
            SigningKeyInfo(
                key_id=f"{key.alg}:{key.version}",
                verify_key_base64=encode_verify_key_base64(verify_key),
                signing_key=key,
            )
        )
    return tuple(out)


def _trusted_key_servers(
    key_servers: Iterable[Any],
) -> tuple[TrustedKeyServerInfo, ...]:
    from signedjson.key import encode_verify_key_base64

    out = []
    for server in key_servers:
        verify_keys = None
        if server.verify_keys is not None:
            verify_keys = {
                key_id: encode_verify_key_base64(key)
                for key_id, key in server.verify_keys.items()
            }
        out.append(
            TrustedKeyServerInfo(
                server_name=server.server_name, verify_keys=verify_keys
            )
        )
    return tuple(out)


def snapshot_from_synapse(config: HomeServerConfig) -> HomeserverSnapshot:
    """Snapshot of a running homeserver's parsed config."""
    from synapse.config._base import read_config_files

    worker = config.worker
    is_worker = worker.worker_app is not None
    listeners = worker.worker_listeners if is_worker else config.server.listeners

    # Synapse keeps only the trust root built from federation_custom_ca_list,
    # not the file names; re-read them from the config files. Without a
    # trust root there is no list: re-parsing the YAML (milliseconds of the
    # homeserver's start-up) would find none.
    custom_ca_list: tuple[str, ...] | None = None
    # (A Synapse without the attribute: read the files, as before.)
    may_have_list = getattr(config.tls, "federation_ca_trust_root", True) is not None
    try:
        raw = (
            read_config_files(config.config_files)
            if config.config_files and may_have_list
            else {}
        )
        ca_list = raw.get("federation_custom_ca_list")
        if isinstance(ca_list, list):
            custom_ca_list = tuple(str(p) for p in ca_list)
    except Exception:
        # The files were readable at start-up; if they are not now, the CA
        # list is only used to pick a trust store, so fall back to none.
        custom_ca_list = None

    whitelist = config.federation.federation_domain_whitelist
    restricted = worker.outbound_federation_restricted_to.instances
    return HomeserverSnapshot(
        server_name=config.server.server_name,
        # Synapse fills in https://<server_name>/ when unset; it serves the
        # client well-known exactly when the admin set it.
        public_baseurl=(
            config.server.public_baseurl
            if config.server.serve_client_wellknown
            else None
        ),
        listeners=tuple(listener_from_synapse(i, x) for i, x in enumerate(listeners)),
        worker_name=worker.worker_name if is_worker else None,
        workers_configured=is_worker or bool(worker.instance_map),
        run_background_tasks=worker.run_background_tasks,
        serve_server_wellknown=config.server.serve_server_wellknown,
        serve_client_wellknown=config.server.serve_client_wellknown,
        tls_certificate_file=config.tls.tls_certificate_file,
        tls_private_key_file=config.tls.tls_private_key_file,
        federation_domain_whitelist=(
            tuple(whitelist) if whitelist is not None else None
        ),
        send_federation=bool(worker.federation_shard_config.instances),
        federation_sender_instances=tuple(worker.federation_shard_config.instances),
        outbound_federation_restricted_to=(
            tuple(restricted) if restricted is not None else None
        ),
        federation_client_minimum_tls_version=config.tls.federation_client_minimum_tls_version,
        federation_verify_certificates=config.tls.federation_verify_certificates,
        federation_custom_ca_list=custom_ca_list,
        signing_keys=_signing_key_info(config.key.signing_key),
        key_refresh_interval_ms=config.key.key_refresh_interval,
        trusted_key_servers=_trusted_key_servers(config.key.key_servers),
        federation_ip_ranges=_federation_ip_ranges(config.server),
        own_origin_limit=_origin_rate_limit(
            getattr(getattr(config, "ratelimiting", None), "rc_federation", None)
        ),
        config_files=tuple(config.config_files),
    )


def _origin_rate_limit(settings: Any) -> OriginRateLimit:
    """Synapse's FederationRatelimitSettings; its defaults where absent."""
    default = OriginRateLimit()
    return OriginRateLimit(
        window_ms=_positive_int(
            getattr(settings, "window_size", None), default.window_ms
        ),
        sleep_limit=_positive_int(
            getattr(settings, "sleep_limit", None), default.sleep_limit
        ),
        concurrent=_positive_int(
            getattr(settings, "concurrent", None), default.concurrent
        ),
    )


def _origin_rate_limit_from_raw(raw: Any) -> OriginRateLimit:
    if not isinstance(raw, Mapping):
        return OriginRateLimit()
    default = OriginRateLimit()
    return OriginRateLimit(
        window_ms=_positive_int(raw.get("window_size"), default.window_ms),
        sleep_limit=_positive_int(raw.get("sleep_limit"), default.sleep_limit),
        concurrent=_positive_int(raw.get("concurrent"), default.concurrent),
    )


def _positive_int(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return default
    return value


def _cidrs(ip_set: Any) -> tuple[str, ...]:
    return tuple(str(cidr) for cidr in ip_set.iter_cidrs())


def _federation_ip_ranges(server: Any) -> FederationIpRanges | None:
    """The IP ranges Synapse's federation client applies
    (matrixfederationclient: `federation_ip_range_blocklist`, `_allowlist`).
    Older releases spelled the attributes `..._blacklist` and
    `..._whitelist`, so both are read; the config keys are still `ip_range_blacklist` and
    `ip_range_whitelist` (and the legacy `federation_ip_range_blacklist`)."""
    blocklist = getattr(server, "federation_ip_range_blocklist", None)
    if blocklist is None:
        blocklist = getattr(server, "federation_ip_range_blacklist", None)
    if blocklist is None:
        return None
    if hasattr(server, "federation_ip_range_blocklist"):
        allowlist = getattr(server, "federation_ip_range_allowlist", None)
    else:
        allowlist = getattr(server, "federation_ip_range_whitelist", None)
    try:
        return FederationIpRanges(
            blocklist=_cidrs(blocklist),
            allowlist=_cidrs(allowlist) if allowlist is not None else (),
        )
    except (AttributeError, TypeError):  # not netaddr IPSets any more
        return None


def _federation_ip_ranges_from_raw(raw: Mapping[str, Any]) -> FederationIpRanges | None:
    """As Synapse's ServerConfig reads them: `ip_range_blacklist` (default
    DEFAULT_IP_RANGE_BLOCKLIST) plus 0.0.0.0 and ::, `ip_range_whitelist`;
    a `federation_ip_range_blacklist` replaces both for federation (with no
    whitelist). None when a range is invalid (Synapse refuses to start)."""
    from synapse.config import server as server_config
    from synapse.config._base import ConfigError

    default = getattr(server_config, "DEFAULT_IP_RANGE_BLOCKLIST", None)
    if default is None:
        default = getattr(server_config, "DEFAULT_IP_RANGE_BLACKLIST", [])
    always = ["0.0.0.0", "::"]
    try:
        if "federation_ip_range_blacklist" in raw:
            blocklist = server_config.generate_ip_set(
                raw["federation_ip_range_blacklist"], always
            )
            allowlist = None
        else:
            blocklist = server_config.generate_ip_set(
                raw.get("ip_range_blacklist", default), always
            )
            allowlist = server_config.generate_ip_set(raw.get("ip_range_whitelist", ()))
    except (ConfigError, TypeError, ValueError):
        return None
    return FederationIpRanges(
        blocklist=_cidrs(blocklist),
        allowlist=_cidrs(allowlist) if allowlist is not None else (),
    )


def _str_list(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),)


def snapshot_from_raw(
    raw: Mapping[str, Any], config_files: Sequence[str]
) -> HomeserverSnapshot:
    """Snapshot of a homeserver.yaml read offline (the `lint` command).

    Mirrors Synapse's defaults for the keys the checks read. Raises ValueError
    when the file is not a homeserver config at all.
    """
    server_name = raw.get("server_name")
    if not isinstance(server_name, str):
        raise ValueError("no server_name: this is not a Synapse homeserver.yaml")
    # As Synapse's Config.load_config: the folder of the last config file
    # holds the keys by default (`<server_name>.signing.key`), while a path
    # given in the config is opened as written, so a relative one is relative
    # to the directory Synapse is started in (Config.abspath is
    # os.path.abspath; read_file opens signing_key_path and
    # federation_custom_ca_list unchanged).
    config_dir = (
        os.path.dirname(os.path.abspath(config_files[-1])) if config_files else "."
    )

    def abspath(path: object) -> str | None:
        if not isinstance(path, str) or not path:
            return None
        return os.path.abspath(path)

    worker_app = raw.get("worker_app")
    if worker_app == "synapse.app.homeserver":
        worker_app = None
    is_worker = worker_app is not None
    listeners = _listeners_from_raw(
        raw.get("worker_listeners" if is_worker else "listeners") or []
    )

    key_path = abspath(raw.get("signing_key_path")) or os.path.join(
        config_dir, f"{server_name}.signing.key"
    )
    signing_keys, signing_key_error = _signing_keys_from_file(key_path)
    from synapse.config._base import Config

    try:
        refresh_ms = Config.parse_duration(raw.get("key_refresh_interval", "1d"))
    except (TypeError, ValueError):
        refresh_ms = DEFAULT_KEY_REFRESH_INTERVAL_MS
    trusted = _trusted_key_servers_from_raw(raw)

    whitelist = raw.get("federation_domain_whitelist")
    # As Synapse's _worker_names_performing_this_duty: the main process sends
    # unless `send_federation: false` or a sender list says otherwise.
    senders = _str_list(raw.get("federation_sender_instances"))
    if senders is None:
        if worker_app == "synapse.app.federation_sender":
            senders = (str(raw.get("worker_name")),)
        else:
            senders = (MAIN_PROCESS,) if raw.get("send_federation", True) else ()
    send_federation = bool(senders)
    public_baseurl = raw.get("public_baseurl")
    if isinstance(public_baseurl, str) and not public_baseurl.endswith("/"):
        public_baseurl += "/"  # Synapse adds it too
    return HomeserverSnapshot(
        server_name=server_name,
        public_baseurl=public_baseurl,
        listeners=listeners,
        worker_name=raw.get("worker_name") if is_worker else None,
        workers_configured=is_worker or bool(raw.get("instance_map")),
        run_background_tasks=(
            (raw.get("run_background_tasks_on") or MAIN_PROCESS)
            == (raw.get("worker_name") if is_worker else MAIN_PROCESS)
        ),
        serve_server_wellknown=bool(raw.get("serve_server_wellknown", False)),
        serve_client_wellknown=raw.get("public_baseurl") is not None,
        tls_certificate_file=abspath(raw.get("tls_certificate_path")),
        tls_private_key_file=abspath(raw.get("tls_private_key_path")),
        federation_domain_whitelist=_str_list(whitelist),
        send_federation=send_federation,
        federation_sender_instances=senders,
        outbound_federation_restricted_to=_str_list(
            raw.get("outbound_federation_restricted_to")
        ),
        federation_client_minimum_tls_version=str(
            raw.get("federation_client_minimum_tls_version", 1)
        ),
        federation_verify_certificates=bool(
            raw.get("federation_verify_certificates", True)
        ),
        federation_custom_ca_list=_str_list(raw.get("federation_custom_ca_list")),
        signing_keys=signing_keys,
        signing_key_error=signing_key_error,
        key_refresh_interval_ms=refresh_ms,
        trusted_key_servers=tuple(trusted),
        federation_ip_ranges=_federation_ip_ranges_from_raw(raw),
        own_origin_limit=_origin_rate_limit_from_raw(raw.get("rc_federation")),
        config_files=tuple(os.path.abspath(p) for p in config_files),
    )


def _signing_keys_from_file(
    key_path: str,
) -> tuple[tuple[SigningKeyInfo, ...], str | None]:
    """The keys in `key_path`, or why there are none."""
    try:
        from signedjson.key import read_signing_keys

        with open(key_path) as f:
            return _signing_key_info(read_signing_keys(f)), None
    except OSError as e:
        return (), f"cannot read {key_path}: {e.strerror}"
    except Exception as e:  # a corrupt key file
        return (), f"cannot parse {key_path}: {e}"


def _trusted_key_servers_from_raw(
    raw: Mapping[str, Any],
) -> list[TrustedKeyServerInfo]:
    """`trusted_key_servers`, with Synapse's default (matrix.org) when unset."""
    trusted: list[TrustedKeyServerInfo] = []
    raw_servers = raw.get("trusted_key_servers")
    if raw_servers is None and "perspectives" not in raw:
        raw_servers = [{"server_name": "matrix.org"}]
    for entry in raw_servers or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("server_name"), str):
            keys = entry.get("verify_keys")
            trusted.append(
                TrustedKeyServerInfo(
                    server_name=entry["server_name"],
                    verify_keys=dict(keys) if isinstance(keys, Mapping) else None,
                )
            )
    return trusted


def module_entry_config(raw: Mapping[str, Any]) -> object:
    """The `config:` block of our entry under `modules:`, if there is one.

    Raises ValueError naming the malformed part (with Synapse's path syntax,
    "modules.<item 0>.config") when `modules:` is not what Synapse can load:
    not a list, an entry that is not a mapping, a `module` that is not a
    string, or a `config` that is not a mapping. Every entry is checked, not
    only ours, because Synapse refuses to start on any of them.
    """
    entries = raw.get("modules") or []
    if not isinstance(entries, list):
        raise ValueError(
            f"modules: expected a list of module entries, not {type(entries).__name__}"
        )
    ours: object = None
    for index, entry in enumerate(entries):
        path = f"modules.<item {index}>"
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"{path}: expected a mapping with `module` and `config`, "
                f"not {type(entry).__name__}"
            )
        module = entry.get("module")
        if not isinstance(module, str):
            raise ValueError(
                f"{path}.module: expected a string such as "
                f"'synapse_fedhealth.FedHealthModule', not {type(module).__name__}"
            )
        # Synapse passes `config or {}` to the module, so null or empty is {}.
        config = entry.get("config") or {}
        if not isinstance(config, Mapping):
            raise ValueError(
                f"{path}.config: expected a mapping, not {type(config).__name__}"
            )
        if ours is None and module.startswith("synapse_fedhealth"):
            ours = config
    return ours


def _hs_of(api: ModuleApi) -> Any:
    """Synapse's HomeServer behind the module API: a private attribute, so a
    release may move it (callers fall back, and say so)."""
    hs = getattr(api, "_hs", None)
    if hs is None:
        raise AttributeError("the module API no longer exposes the homeserver (_hs)")
    return hs


def snapshot_of(api: ModuleApi) -> HomeserverSnapshot:
    return snapshot_from_synapse(_hs_of(api).config)


def reactor_of(api: ModuleApi) -> Any:
    """Synapse's reactor: the module API does not expose it. Where Synapse
    moved it, Twisted's global reactor, which Synapse runs on."""
    try:
        return _hs_of(api).get_reactor()
    except Exception as e:
        logger.warning(
            "synapse_fedhealth could not read Synapse's reactor (%s: %s); "
            "using Twisted's global reactor",
            type(e).__name__,
            e,
        )
        from twisted.internet import reactor

        return reactor


def synapse_version() -> str:
    """The running Synapse's version (`synapse.__version__`)."""
    from synapse import __version__

    return str(__version__)


def run_as_background_process(
    api: ModuleApi, desc: LiteralString, func: Callable[..., Awaitable[Any]], *args: Any
) -> defer.Deferred[Any]:
    """Runs `func(*args)` as a named Synapse background process: its own
    logcontext, its CPU and database use in Synapse's background-process
    metrics. The Deferred fires in the sentinel context.

    `ModuleApi.run_as_background_process` is new in Synapse 1.136; before, the
    module API exports the same function at module level (with the same
    arguments; it is deprecated from 1.136 on)."""
    start: Callable[..., defer.Deferred[Any]] | None = getattr(
        api, "run_as_background_process", None
    )
    if start is None:
        from synapse.module_api import run_as_background_process as start_process

        start = start_process
    return start(desc, func, *args)


def user_agent_of(api: ModuleApi) -> str:
    """The User-Agent Synapse's federation client sends (matrixfederationclient);
    where Synapse moved what it is made of, `Synapse/<version>`."""
    try:
        hs = _hs_of(api)
        agent = str(hs.version_string)
        suffix = hs.config.server.user_agent_suffix
    except Exception as e:
        from synapse import __version__ as synapse_version

        logger.warning(
            "synapse_fedhealth could not read Synapse's User-Agent (%s: %s); "
            "sending Synapse/%s",
            type(e).__name__,
            e,
            synapse_version,
        )
        return f"Synapse/{synapse_version}"
    return f"{agent} {suffix}" if suffix else agent


async def is_server_admin(api: ModuleApi, requester: Requester) -> bool:
    """Synapse's own server-admin decision, as its admin API takes it: its
    auth layer decides (the database flag with Synapse's own auth; the
    token's `urn:synapse:admin:*` scope under Matrix Authentication
    Service). The database flag where that layer cannot be reached."""
    try:
        auth = _hs_of(api).get_auth()
        decide = auth.is_server_admin
    except Exception:
        return await api.is_user_admin(requester.user.to_string())
    return bool(await decide(requester))


def may_have_workers(api: ModuleApi) -> bool:
    """Workers need PostgreSQL (Synapse runs SQLite in monolith mode only), so
    a homeserver on SQLite has no other process to share a report with."""
    try:
        databases = api._hs.config.database.databases
        return any(db.config.get("name", "sqlite3") != "sqlite3" for db in databases)
    except (AttributeError, TypeError):  # a Synapse that moved its config
        # Share anyway: the table costs little.
        return True


# -- the outbound direction (SPEC 4.6) ----------------------------------------------

# Bounded answers: the version and key responses are small JSON objects.
OUTBOUND_MAX_BODY = 64 * 1024  # 64 KiB
# Of the time a probe has, the agent's request gets this share; the rest is
# for the lookups that name the cause of a failure.
OUTBOUND_REQUEST_SHARE = 0.7
MAX_SHARED_ROOM_SERVERS_QUERY_ROWS = 50
DEFAULT_FEDERATION_PORT = 8448


class _OutboundAgents:
    """What `SynapseOutbound` builds on Synapse's federation TLS policy."""

    __slots__ = ("tls_policy", "well_known", "well_known_agent", "worker_agent")

    def __init__(
        self,
        *,
        tls_policy: Any,
        worker_agent: Any,
        well_known_agent: _RecordingAgent,
        well_known: Any,
    ) -> None:
        self.tls_policy = tls_policy
        # Through the federation proxy workers (None: this instance sends).
        self.worker_agent = worker_agent
        self.well_known_agent = well_known_agent
        self.well_known = well_known


class SynapseOutbound:
    """`engine.outbound.OutboundClient` and `DestinationsReader` on Synapse's
    own code: the `MatrixFederationAgent` that `MatrixFederationHttpClient`
    builds (same IP ranges, TLS policy, proxy config and user agent; through
    Synapse's `ProxyAgent` to the federation proxy workers when
    `outbound_federation_restricted_to` excludes this instance; wrapped in
    the same `BlocklistingAgentWrapper`), without the client around it, so
    nothing touches the destinations table, backoff or retry state. The SRV
    and well-known caches are our own: Synapse's module-wide SRV cache and
    its well-known cache stay as they were.
    """

    def __init__(self, api: ModuleApi) -> None:
        # Looked up now, so that a Synapse that moved them makes the client
        # unavailable at start-up (outbound.reach then skips), as before
        # any agent is made.
        from synapse.crypto.context_factory import FederationPolicyForHTTPS
        from synapse.http.client import BlocklistingAgentWrapper
        from synapse.http.federation.well_known_resolver import WellKnownResolver
        from synapse.http.proxyagent import ProxyAgent
        from synapse.util.caches.ttlcache import TTLCache

        self._synapse_classes: tuple[Any, Any, Any, Any] = (
            FederationPolicyForHTTPS,
            BlocklistingAgentWrapper,
            WellKnownResolver,
            ProxyAgent,
        )
        hs = api._hs
        self._api = api
        self._hs = hs
        # Any: Synapse's zope interfaces need the mypy-zope plugin to type.
        self._reactor: Any = hs.get_reactor()
        config = hs.config
        self._user_agent = user_agent_of(api).encode("ascii", "replace")
        self._blocklist = config.server.federation_ip_range_blocklist
        self._allowlist = config.server.federation_ip_range_allowlist
        self._proxy_config = config.server.proxy_config
        self.minimum_tls_version = str(config.tls.federation_client_minimum_tls_version)
        restricted = config.worker.outbound_federation_restricted_to
        self._restricted = restricted
        self._direct = hs.get_instance_name() in restricted
        self.via_workers: tuple[str, ...] = (
            () if self._direct else tuple(restricted.instances or ())
        )
        # Our own well-known caches, registered once per process under our
        # own cache names (a second "well-known" would take over Synapse's
        # cache metrics); emptied of a server before each probe of it.
        self._well_known_cache: Any = TTLCache(
            cache_name="fedhealth_well_known", server_name=hs.hostname
        )
        self._had_well_known_cache: Any = TTLCache(
            cache_name="fedhealth_had_well_known", server_name=hs.hostname
        )
        # The TLS policy and the agents on it are made by the first probe:
        # the policy loads the system's CA store (about 13 ms of the
        # homeserver's start-up), and the first run comes later.
        self._agents: _OutboundAgents | None = None

    def _agents_for_probes(self) -> _OutboundAgents:
        if self._agents is None:
            self._agents = self._make_agents()
        return self._agents

    def _make_agents(self) -> _OutboundAgents:
        (
            FederationPolicyForHTTPS,
            BlocklistingAgentWrapper,
            WellKnownResolver,
            ProxyAgent,
        ) = self._synapse_classes
        hs = self._hs
        config = hs.config
        tls_policy: Any = FederationPolicyForHTTPS(config)
        worker_agent = None
        if not self._direct:
            from synapse.http.connectproxyclient import BearerProxyCredentials

            secret = config.worker.worker_replication_secret or ""
            worker_agent = BlocklistingAgentWrapper(
                _any(ProxyAgent)(
                    reactor=self._reactor,
                    proxy_reactor=self._reactor,
                    contextFactory=tls_policy,
                    federation_proxy_locations=self._restricted.locations,
                    federation_proxy_credentials=BearerProxyCredentials(
                        secret.encode("ascii")
                    ),
                ),
                ip_blocklist=self._blocklist,
            )
        well_known_agent = _RecordingAgent(
            _any(BlocklistingAgentWrapper)(
                _any(ProxyAgent)(
                    reactor=self._blocking_reactor(),
                    proxy_reactor=self._reactor,
                    contextFactory=tls_policy,
                    proxy_config=self._proxy_config,
                ),
                ip_blocklist=self._blocklist,
            )
        )
        well_known = WellKnownResolver(
            server_name=hs.hostname,
            reactor=self._blocking_reactor(),
            clock=hs.get_clock(),
            agent=_any(well_known_agent),
            user_agent=self._user_agent,
            well_known_cache=self._well_known_cache,
            had_well_known_cache=self._had_well_known_cache,
        )
        return _OutboundAgents(
            tls_policy=tls_policy,
            worker_agent=worker_agent,
            well_known_agent=well_known_agent,
            well_known=well_known,
        )

    def _blocking_reactor(self) -> Any:
        from synapse.http.client import BlocklistingReactorWrapper

        return BlocklistingReactorWrapper(
            self._reactor, self._allowlist, self._blocklist
        )

    # -- OutboundClient ------------------------------------------------------------

    async def probe(
        self, server_name: str, paths: Sequence[str], timeout_s: float
    ) -> Any:
        from synapse_fedhealth.checks.outbound import OutboundProbe

        start = self._reactor.seconds()
        try:
            d = run_as_background_process(
                self._api,
                "fedhealth_outbound_probe",
                self._probe,
                server_name,
                tuple(paths),
                timeout_s,
            )
            # Awaited as it is: the engine's coroutines follow Twisted's rules,
            # not Synapse's, and this Deferred fires in the sentinel context.
            # make_deferred_yieldable would resume us in the caller's context
            # and leave it current when we next wait on a plain Deferred.
            probe = await d
        except Exception as e:  # a bug of ours; never an exception for the run
            probe = OutboundProbe(
                server_name=server_name, error=f"{type(e).__name__}: {e}"
            )
        if probe is None:
            probe = OutboundProbe(server_name=server_name, error="no result")
        return attr.evolve(
            probe, elapsed_ms=int((self._reactor.seconds() - start) * 1000)
        )

    async def _probe(
        self, server_name: str, paths: tuple[str, ...], timeout_s: float
    ) -> Any:
        from synapse.http.client import BlocklistingAgentWrapper
        from synapse.http.federation.matrix_federation_agent import (
            MatrixFederationAgent,
        )

        from synapse_fedhealth.checks.outbound import OutboundProbe

        agents = self._agents_for_probes()
        name = server_name.encode("ascii", "replace")
        agents.well_known_agent.errors.pop(server_name, None)
        self._well_known_cache.pop(name, None)
        self._had_well_known_cache.pop(name, None)
        srv = _recording_srv_resolver()
        agent: Any = agents.worker_agent
        pool = None
        if agent is None:
            direct = MatrixFederationAgent(
                server_name=self._hs.hostname,
                reactor=self._reactor,
                clock=self._hs.get_clock(),
                tls_client_options_factory=agents.tls_policy,
                user_agent=self._user_agent,
                ip_allowlist=self._allowlist,
                ip_blocklist=self._blocklist,
                proxy_config=self._proxy_config,
                _srv_resolver=srv,
                _well_known_resolver=agents.well_known,
            )
            pool = direct._pool
            agent = _any(BlocklistingAgentWrapper)(direct, ip_blocklist=self._blocklist)
        budget_end = self._reactor.seconds() + timeout_s
        request_s = timeout_s * OUTBOUND_REQUEST_SHARE
        delegated: str | None = None
        answers = []
        try:
            for path in paths:
                left = min(request_s, budget_end - self._reactor.seconds())
                answer = await self._get(agent, server_name, path, left, srv)
                answers.append(answer)
                if answer.status is None:
                    break
            cached = self._well_known_cache.get(name, None)
            if cached:
                delegated = cached.decode("ascii", "replace")
        finally:
            if pool is not None:
                pool.closeCachedConnections()
        # Also on success: the report names the hosts Synapse reached.
        hosts = await self._hosts(
            delegated or server_name, srv, budget_end - self._reactor.seconds()
        )
        return OutboundProbe(
            server_name=server_name,
            answers=tuple(answers),
            delegated_to=delegated,
            hosts=hosts,
            proxy=self._proxy_for(hosts),
            via_workers=self.via_workers,
            minimum_tls_version=self.minimum_tls_version,
            well_known_error=agents.well_known_agent.errors.pop(server_name, ()),
        )

    async def _get(
        self, agent: Any, server_name: str, path: str, timeout_s: float, srv: Any
    ) -> Any:
        import io

        from synapse.http.client import read_body_with_max_size
        from synapse.logging.context import make_deferred_yieldable, run_in_background

        from synapse_fedhealth.checks.outbound import PathAnswer
        from synapse_fedhealth.engine.outbound import answer_from_error

        uri = f"matrix-federation://{server_name}{path}".encode("ascii", "replace")
        try:
            # As MatrixFederationHttpClient calls it: the agent's Deferred
            # does not keep our logcontext by itself.
            d = run_in_background(agent.request, b"GET", uri)
            d.addTimeout(max(0.0, timeout_s), self._reactor)
            response = await make_deferred_yieldable(d)
            body = io.BytesIO()
            read = read_body_with_max_size(response, body, OUTBOUND_MAX_BODY)
            read.addTimeout(max(0.1, timeout_s), self._reactor)
            await make_deferred_yieldable(read)
            return PathAnswer(path=path, status=response.code, body=body.getvalue())
        except Exception as e:
            answer = answer_from_error(path, e)
            if srv.pending:
                answer = attr.evolve(
                    answer,
                    error_chain=(
                        "SrvLookupTimeout: the SRV lookup of "
                        + ", ".join(sorted(srv.pending))
                        + " did not finish",
                        *answer.error_chain,
                    ),
                )
            return answer

    async def _hosts(self, name: str, srv: Any, timeout_s: float) -> tuple[Any, ...]:
        """The hosts Synapse's agent connects to for `name` (after its
        well-known), each resolved with the system resolver Synapse uses,
        unfiltered, to tell "did not resolve" from "resolved but blocked"."""
        from synapse.http.client import _is_ip_blocked
        from synapse.logging.context import make_deferred_yieldable, run_in_background
        from twisted.internet import defer

        from synapse_fedhealth.checks.outbound import HostLookup
        from synapse_fedhealth.matrix_names import parse_server_name

        try:
            parsed = parse_server_name(name, strict=False)
            host, port = parsed.host, parsed.port
        except ValueError:
            return ()
        targets: list[tuple[str, int]] = []
        if port is None and parsed.ip is None:
            for service in (b"_matrix-fed._tcp.", b"_matrix._tcp."):
                found = srv.servers.get(service + host.encode("ascii", "replace"))
                if found:
                    targets = [
                        (s.host.decode("ascii", "replace"), s.port) for s in found
                    ]
                    break
        if not targets:
            targets = [(host, port or DEFAULT_FEDERATION_PORT)]
        targets = targets[:5]

        async def look(target: tuple[str, int]) -> HostLookup:
            from netaddr import IPAddress  # type: ignore[import-untyped]

            h, p = target
            try:
                d = _resolve_host(self._reactor, h, p)
                d.addTimeout(max(0.05, timeout_s), self._reactor)
                addresses = await make_deferred_yieldable(d)
            except Exception as e:
                return HostLookup(h, p, error=f"{type(e).__name__}: {e}"[:200])
            blocked = tuple(
                a
                for a in addresses
                if _is_ip_blocked(IPAddress(a), self._allowlist, self._blocklist)
            )
            error = "" if addresses else "no addresses"
            return HostLookup(h, p, tuple(addresses), blocked, error)

        results: list[Any] = await make_deferred_yieldable(
            defer.gatherResults(
                [run_in_background(look, t) for t in targets], consumeErrors=True
            )
        )
        return tuple(results)

    def _proxy_for(self, hosts: Sequence[Any]) -> str | None:
        """The https proxy federation to these hosts goes through, as Synapse's
        MatrixHostnameEndpoint decides it (https_proxy only, minus
        no_proxy_hosts), without its credentials."""
        from urllib.request import (  # type: ignore[attr-defined]
            proxy_bypass_environment,
        )

        config = self._proxy_config
        if not self._direct or config is None or not config.https_proxy:
            return None
        proxies = config.get_proxies_dictionary()
        if hosts and all(
            proxy_bypass_environment(h.host, proxies=proxies) for h in hosts
        ):
            return None
        proxy = str(config.https_proxy)
        # Never show credentials (user:password@host).
        if "@" in proxy:
            scheme, _, rest = proxy.rpartition("//")
            proxy = (scheme + "//" if scheme else "") + rest.rsplit("@", 1)[1]
        return proxy


class SynapseDestinations:
    """Synapse's destinations table, read only (`outbound.destinations`)."""

    def __init__(self, api: ModuleApi) -> None:
        self._api = api

    async def read(self) -> Any:
        # In a named logcontext of its own: a run may start in the sentinel
        # context, and a database transaction must not. Awaited as it is (it
        # fires in the sentinel context), as in `SynapseOutbound.probe`.
        return await run_as_background_process(
            self._api, "fedhealth_destinations", self._read_in_context
        )

    async def _read_in_context(self) -> Any:
        # Awaited directly: the transaction starts in this context, and the
        # coroutine behind the Deferred restores it when it resumes us.
        return await self._api.run_db_interaction(
            "fedhealth_destinations", _read_destinations
        )


class _RecordingAgent:
    """Passes requests to `agent`, and keeps why each host's last one failed:
    Synapse's WellKnownResolver swallows the error (it then ignores the
    delegation), and that error is often the real cause."""

    MAX_HOSTS = 64

    def __init__(self, agent: Any) -> None:
        self._agent = agent
        self.errors: dict[str, tuple[str, ...]] = {}

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Any:
        from synapse_fedhealth.engine.outbound import error_chain

        host = urllib.parse.urlsplit(uri.decode("ascii", "replace")).hostname or ""

        def failed(failure: Any) -> Any:
            if len(self.errors) < self.MAX_HOSTS:
                self.errors[host] = error_chain(failure)
            return failure

        d = self._agent.request(method, uri, headers, bodyProducer)
        d.addErrback(failed)
        return d


def _any(value: Any) -> Any:
    """Synapse's agents implement zope interfaces, which mypy sees only with
    the mypy-zope plugin."""
    return value


def _recording_srv_resolver() -> Any:
    """Synapse's SrvResolver with a cache of its own (not the module-wide
    SERVER_CACHE), recording what it found and what is still pending."""
    from synapse.http.federation.srv_resolver import SrvResolver

    class RecordingSrvResolver(SrvResolver):
        def __init__(self) -> None:
            super().__init__(cache={})
            self.servers: dict[bytes, list[Any]] = {}
            self.pending: set[str] = set()

        async def resolve_service(self, service_name: bytes) -> list[Any]:
            label = service_name.decode("ascii", "replace")
            self.pending.add(label)
            try:
                servers = await super().resolve_service(service_name)
            finally:
                self.pending.discard(label)
            self.servers[service_name] = list(servers)
            return servers

    return RecordingSrvResolver()


def _resolve_host(reactor: Any, host: str, port: int) -> Any:
    """The reactor's own name resolver (what Synapse's HostnameEndpoint
    uses: getaddrinfo in a thread), unfiltered."""
    from twisted.internet import defer
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.interfaces import IResolutionReceiver
    from zope.interface import implementer

    d: defer.Deferred[list[str]] = defer.Deferred()
    found: list[str] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        @staticmethod
        def resolutionBegan(resolution: Any) -> None:
            pass

        @staticmethod
        def addressResolved(address: Any) -> None:
            if isinstance(address, (IPv4Address, IPv6Address)) and (
                address.host not in found
            ):
                found.append(address.host)

        @staticmethod
        def resolutionComplete() -> None:
            if not d.called:
                d.callback(found)

    reactor.nameResolver.resolveHostName(Receiver(), host, portNumber=port)
    return d


def _read_destinations(txn: Any) -> Any:
    """Read-only: counts, the longest-failing destinations, and the remote
    servers we share rooms with."""
    from synapse_fedhealth.checks.outbound import DestinationRow, DestinationsRecord

    failing_where = "(failure_ts IS NOT NULL OR retry_interval > 0)"
    txn.execute("SELECT COUNT(*) FROM destinations")
    total = int(txn.fetchone()[0])
    txn.execute(
        f"SELECT COUNT(*), SUM(CASE WHEN last_successful_stream_ordering IS NOT NULL "
        f"THEN 1 ELSE 0 END) FROM destinations WHERE {failing_where}"
    )
    failing_total, failing_before = txn.fetchone()
    txn.execute(
        "SELECT destination, retry_last_ts, retry_interval, failure_ts, "
        "last_successful_stream_ordering FROM destinations "
        f"WHERE {failing_where} ORDER BY failure_ts ASC LIMIT 20"
    )
    rows = tuple(
        DestinationRow(
            destination=str(r[0]),
            retry_last_ts=r[1],
            retry_interval=r[2],
            failure_ts=r[3],
            last_successful_stream_ordering=r[4],
        )
        for r in txn.fetchall()
    )
    shared: int | None
    try:
        from synapse.storage.engines import PostgresEngine

        find = (
            "strpos(state_key, ':')"
            if isinstance(txn.database_engine, PostgresEngine)
            else "instr(state_key, ':')"
        )
        txn.execute(
            f"SELECT COUNT(DISTINCT substr(state_key, {find} + 1)) "
            "FROM current_state_events WHERE type = 'm.room.member' "
            "AND membership = 'join'"
        )
        all_servers = int(txn.fetchone()[0])
        # Minus our own server, when it has joined members (it always has
        # when it is in a room at all).
        shared = max(0, all_servers - 1)
    except Exception:
        shared = None
    return DestinationsRecord(
        total=total,
        failing=rows,
        failing_total=int(failing_total or 0),
        failing_succeeded_before=int(failing_before or 0),
        shared_room_servers=shared,
    )


class FederationTrafficRecorder:
    """`engine.outbound.TrafficSource`: Synapse's federation callbacks (events
    we delivered, or that remote servers pulled) where available, and
    Synapse's last-received / last-sent PDU gauges in the in-process
    registry."""

    MAX_SERVERS = 1000  # bounded memory, whatever the traffic

    def __init__(self, api: ModuleApi, server_name: str) -> None:
        self._server_name = server_name
        self._reactor = reactor_of(api)
        self._since_ms = int(self._reactor.seconds() * 1000)
        self._delivered: dict[str, int] = {}
        self.callbacks = False
        register = getattr(api, "register_federation_callbacks", None)
        if register is not None:
            try:
                register(on_event_delivered_over_federation=self._on_delivered)
                self.callbacks = True
            except Exception:
                self.callbacks = False

    async def _on_delivered(self, delivery: Any) -> None:
        name = str(getattr(delivery, "server_name", ""))
        if not name:
            return
        if name not in self._delivered and len(self._delivered) >= self.MAX_SERVERS:
            return
        self._delivered[name] = int(self._reactor.seconds() * 1000)

    def record(self) -> Any:
        from prometheus_client import REGISTRY

        from synapse_fedhealth.checks.traffic import TrafficRecord

        received = _gauge_times(
            REGISTRY,
            "synapse_federation_last_received_pdu_time",
            "origin_server_name",
            self._server_name,
        )
        sent = _gauge_times(
            REGISTRY,
            "synapse_federation_last_sent_pdu_time",
            "destination_server_name",
            self._server_name,
        )
        sources = []
        if self.callbacks:
            sources.append("federation callbacks")
        if received is not None or sent is not None:
            sources.append("Synapse's PDU metrics")
        delivered = dict(sent or {})
        for name, ts in self._delivered.items():
            delivered[name] = max(ts, delivered.get(name, 0))
        return TrafficRecord(
            received_from=received or {},
            delivered_to=delivered,
            sources=tuple(sources),
            since_ms=self._since_ms,
        )


def _gauge_times(
    registry: Any, metric: str, label: str, server_name: str
) -> dict[str, int] | None:
    """server -> ms from one of Synapse's per-server timestamp gauges (in
    seconds), or None when the gauge is not registered."""
    names = getattr(registry, "_names_to_collectors", {})
    collector = names.get(metric)
    if collector is None:
        return None
    out: dict[str, int] = {}
    for family in collector.collect():
        for sample in family.samples:
            other = sample.labels.get(label)
            if sample.labels.get("server_name", server_name) != server_name:
                continue
            if other and sample.value > 0 and len(out) < 1000:
                out[other] = int(sample.value * 1000)
    return out
