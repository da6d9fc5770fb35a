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
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attr

if TYPE_CHECKING:
    from synapse.config.homeserver import HomeServerConfig
    from synapse.config.server import ListenerConfig
    from synapse.module_api import ModuleApi, Requester

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
    # not the file names; re-read them from the config files.
    custom_ca_list: tuple[str, ...] | None = None
    try:
        raw = read_config_files(config.config_files) if config.config_files else {}
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
        config_files=tuple(config.config_files),
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

    signing_keys: tuple[SigningKeyInfo, ...] = ()
    signing_key_error = None
    key_path = abspath(raw.get("signing_key_path")) or os.path.join(
        config_dir, f"{server_name}.signing.key"
    )
    try:
        from signedjson.key import read_signing_keys

        with open(key_path) as f:
            signing_keys = _signing_key_info(read_signing_keys(f))
    except OSError as e:
        signing_key_error = f"cannot read {key_path}: {e.strerror}"
    except Exception as e:  # a corrupt key file
        signing_key_error = f"cannot parse {key_path}: {e}"

    from synapse.config._base import Config

    try:
        refresh_ms = Config.parse_duration(raw.get("key_refresh_interval", "1d"))
    except (TypeError, ValueError):
        refresh_ms = DEFAULT_KEY_REFRESH_INTERVAL_MS

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
        config_files=tuple(os.path.abspath(p) for p in config_files),
    )


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
