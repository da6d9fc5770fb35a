"""Config checks about this process's listeners: who serves federation, the
reverse-proxy headers, the server well-known, and the TLS listeners' files."""

from __future__ import annotations

from collections.abc import Sequence

from synapse_fedhealth.checks import config_certs
from synapse_fedhealth.checks.config_names import BindScope, bind_scope
from synapse_fedhealth.homeserver import HomeserverSnapshot, ListenerInfo
from synapse_fedhealth.matrix_names import ServerNameError, parse_server_name
from synapse_fedhealth.report import CheckResult, fail, ok, skip, warn
from synapse_fedhealth.settings import trust_files

FEDERATION_LISTENER = "config.federation_listener"
X_FORWARDED = "config.x_forwarded"
TLS_LISTENER = "config.tls_listener"
WELL_KNOWN = "config.well_known"

# Resources whose requests come from the outside world, so their client IP matters.
PROXIED_RESOURCES = frozenset({"client", "federation"})
WELL_KNOWN_PORT = 443  # what Synapse's /.well-known/matrix/server advertises

FEDERATION_LISTENER_SNIPPET = """listeners:
  - port: 8008
    type: http
    bind_addresses: ['127.0.0.1']
    x_forwarded: true
    resources:
      - names: [client, federation]"""


def _labels(listeners: Sequence[ListenerInfo]) -> str:
    return ", ".join(x.label for x in listeners)


def federation_listeners(snapshot: HomeserverSnapshot) -> list[ListenerInfo]:
    return [
        x
        for x in snapshot.listeners
        if x.type == "http" and "federation" in x.resources
    ]


def check_federation_listener(snapshot: HomeserverSnapshot) -> list[CheckResult]:
    serving = federation_listeners(snapshot)
    if serving:
        return [
            ok(
                FEDERATION_LISTENER,
                f"federation is served by {_labels(serving)}",
                details={"listeners": [x.label for x in serving]},
            )
        ]
    if snapshot.federation_disabled:
        return [
            ok(
                FEDERATION_LISTENER,
                "no listener serves federation, and federation is disabled "
                "(federation_domain_whitelist: [])",
                details={"listeners": [], "federation_disabled": True},
            )
        ]
    if snapshot.is_worker:
        return [
            ok(
                FEDERATION_LISTENER,
                f"this worker ({snapshot.worker_name}) serves no federation; another "
                "process may (the network checks show whether one does)",
                details={"listeners": [], "worker": snapshot.worker_name},
            )
        ]
    if snapshot.workers_configured:
        return [
            ok(
                FEDERATION_LISTENER,
                "the main process serves no federation; with workers configured a "
                "worker may (the network checks show whether one does)",
                details={"listeners": [], "workers_configured": True},
            )
        ]
    return [
        fail(
            FEDERATION_LISTENER,
            "no listener serves the `federation` resource, so no other server can "
            "talk to this one",
            fix="Add `federation` to the `resources` names of an http listener in "
            "homeserver.yaml (and route /_matrix/federation and /_matrix/key to it "
            "from your reverse proxy), e.g.:\n" + FEDERATION_LISTENER_SNIPPET,
            details={"listeners": []},
        )
    ]


def _scopes(listener: ListenerInfo) -> set[BindScope]:
    if listener.is_unix:
        return {BindScope.UNIX}
    return {bind_scope(a) for a in listener.bind_addresses}


def _proxy_candidate(listener: ListenerInfo) -> bool:
    """A plain-HTTP listener a local reverse proxy would forward client or
    federation traffic to."""
    return (
        listener.type == "http"
        and not listener.tls
        and bool(listener.resources & PROXIED_RESOURCES)
        and bool(_scopes(listener))
        and _scopes(listener) <= {BindScope.LOCAL, BindScope.UNIX, BindScope.WILDCARD}
    )


X_FORWARDED_FIX = (
    "Set `x_forwarded: true` on this listener in homeserver.yaml, and make the proxy "
    "send the headers: nginx `proxy_set_header X-Forwarded-For $remote_addr; "
    "proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header Host $host;`, "
    "Apache `RequestHeader set X-Forwarded-Proto https` with `ProxyPreserveHost On`; "
    "Caddy and Traefik send them by default. See docs/checks.md#configx_forwarded."
)

SPOOF_FIX = (
    "Bind this listener to the address only the reverse proxy uses "
    "(`bind_addresses: ['127.0.0.1']` in homeserver.yaml) or firewall the port, "
    "or set `x_forwarded: false` if no proxy fronts it."
)


def check_x_forwarded(
    snapshot: HomeserverSnapshot, public_listener_index: int | None
) -> list[CheckResult]:
    results: list[CheckResult] = []
    http = [x for x in snapshot.listeners if x.type == "http"]
    public = next((x for x in http if x.index == public_listener_index), None)

    if public is not None:
        # A run has shown that the public (https) path reaches this listener. A
        # plain-HTTP listener reached over https has a proxy in front of it.
        if not public.tls and not public.x_forwarded:
            results.append(
                warn(
                    X_FORWARDED,
                    f"the public path reaches {public.label} through a reverse proxy, "
                    "but x_forwarded is false: Synapse logs and rate-limits the "
                    "proxy's address instead of the client's",
                    fix=X_FORWARDED_FIX,
                    details={"listener": public.label, "definite": True},
                )
            )
    else:
        candidates = [x for x in http if _proxy_candidate(x)]
        # When one local listener already trusts the proxy's headers, the others
        # are the admin's internal ports (admin API, tools): no proxy fronts them.
        if not any(x.x_forwarded for x in candidates):
            for listener in candidates:
                results.append(
                    warn(
                        X_FORWARDED,
                        f"if a reverse proxy fronts {listener.label}, set x_forwarded "
                        "on it: without it Synapse sees the proxy's address as every "
                        "client's",
                        fix=X_FORWARDED_FIX,
                        details={"listener": listener.label, "definite": False},
                    )
                )

    for listener in http:
        scopes = _scopes(listener)
        exposed = scopes & {BindScope.PUBLIC, BindScope.WILDCARD}
        if listener.x_forwarded and exposed and listener.resources & PROXIED_RESOURCES:
            where = (
                "every interface"
                if BindScope.WILDCARD in exposed
                else "a public address"
            )
            results.append(
                warn(
                    X_FORWARDED,
                    f"{listener.label} trusts X-Forwarded-For but listens on {where}: "
                    "anyone who reaches it directly can spoof client IP addresses",
                    fix=SPOOF_FIX,
                    details={
                        "listener": listener.label,
                        "bind_addresses": list(listener.bind_addresses),
                    },
                )
            )
    if results:
        return results
    summary = "the listeners' x_forwarded settings fit their bind addresses"
    if public is not None:
        summary = (
            f"the public path reaches {public.label}, whose x_forwarded setting fits"
        )
    return [ok(X_FORWARDED, summary)]


def _server_host(snapshot: HomeserverSnapshot) -> str:
    try:
        return parse_server_name(snapshot.server_name).host
    except ServerNameError:
        return snapshot.server_name


def check_well_known(snapshot: HomeserverSnapshot) -> list[CheckResult]:
    if not snapshot.serve_server_wellknown:
        return [
            ok(
                WELL_KNOWN,
                "serve_server_wellknown is off: peers use SRV records or port 8448, "
                "unless another web server publishes /.well-known/matrix/server",
                details={"serve_server_wellknown": False},
            )
        ]
    try:
        name = parse_server_name(snapshot.server_name)
    except ServerNameError:
        return [skip(WELL_KNOWN, "the server_name is invalid (see config.server_name)")]
    if name.port is not None or name.ip is not None:
        return [
            ok(
                WELL_KNOWN,
                "serve_server_wellknown is on, but peers never fetch a well-known for "
                "a server_name with an explicit port or an IP literal",
                details={"serve_server_wellknown": True, "advertises": None},
            )
        ]
    advertised = f"{name.host}:{WELL_KNOWN_PORT}"
    details = {"serve_server_wellknown": True, "advertises": advertised}
    http = [x for x in snapshot.listeners if x.type == "http"]
    results: list[CheckResult] = []
    if not any("client" in x.resources for x in http):
        results.append(
            warn(
                WELL_KNOWN,
                "serve_server_wellknown is on, but no listener of this process has "
                "the `client` resource, which is where Synapse serves "
                "/.well-known/matrix/server",
                fix="Add `client` to the resources of the listener your reverse proxy "
                "sends https://" + name.host + "/.well-known/ to, or publish the file "
                'yourself ({"m.server": "' + advertised + '"}) and set '
                "`serve_server_wellknown: false`.",
                details=details,
            )
        )
    serving = federation_listeners(snapshot)
    if (
        not serving
        and not snapshot.workers_configured
        and not snapshot.federation_disabled
    ):
        results.append(
            warn(
                WELL_KNOWN,
                f"the well-known sends peers to {advertised}, but no listener serves "
                "federation (see config.federation_listener)",
                fix="Add `federation` to the resources of the listener behind "
                f"https://{advertised}/, or set `serve_server_wellknown: false`.",
                details=details,
            )
        )
    direct = [
        x
        for x in serving
        if x.tls and x.port != WELL_KNOWN_PORT and BindScope.LOCAL not in _scopes(x)
    ]
    if serving and len(direct) == len(serving):
        # Synapse terminates TLS itself on another port: peers following the
        # well-known go to 443, where this process does not listen.
        results.append(
            warn(
                WELL_KNOWN,
                f"the well-known sends peers to {advertised}, but federation is "
                f"served with TLS directly on {_labels(direct)}; that works only if "
                f"something on port {WELL_KNOWN_PORT} forwards to it",
                fix="Set `serve_server_wellknown: false` so peers use port "
                f"{direct[0].port} (via an SRV record or 8448), or put a reverse "
                f"proxy on port {WELL_KNOWN_PORT} in front of the federation listener.",
                details={**details, "listeners": [x.label for x in direct]},
            )
        )
    if results:
        return results
    return [
        ok(
            WELL_KNOWN,
            f"/.well-known/matrix/server advertises {advertised}",
            details=details,
        )
    ]


def check_tls_listener(
    snapshot: HomeserverSnapshot,
    *,
    now: float,
    warning_days: int,
    ca_file: str | None,
) -> list[CheckResult]:
    """`ca_file` is the module's tls_ca_file; without it, peers are assumed to
    trust what this server trusts: federation_custom_ca_list, else the system
    store (SPEC 2.1)."""
    tls_listeners = [x for x in snapshot.listeners if x.tls]
    if not tls_listeners:
        return [
            skip(
                TLS_LISTENER,
                "no listener terminates TLS (a reverse proxy does; tls.certificate "
                "checks the certificate it serves)",
            )
        ]
    labels = _labels(tls_listeners)
    cert_path = snapshot.tls_certificate_file
    if cert_path is None:
        return [
            fail(
                TLS_LISTENER,
                f"{labels} has tls: true but tls_certificate_path is not set",
                fix="Set `tls_certificate_path` (the full chain, e.g. fullchain.pem) "
                "and `tls_private_key_path` in homeserver.yaml.",
                details={"listeners": [x.label for x in tls_listeners]},
            )
        ]
    host = _server_host(snapshot)
    analysis = config_certs.analyse_certificate_files(
        cert_path=cert_path,
        key_path=snapshot.tls_private_key_file,
        expected_host=host,
        now=now,
        warning_days=warning_days,
        ca_files=trust_files(ca_file, snapshot.federation_custom_ca_list or ()),
    )
    base_details = {
        "listeners": [x.label for x in tls_listeners],
        "file": cert_path,
        "key_file": snapshot.tls_private_key_file,
        "expected_name": host,
        "names": list(analysis.names),
        "not_after": analysis.not_after,
        "chain_length": analysis.chain_length,
        "trust_store": analysis.trust_store,
    }
    results = []
    for problem in analysis.problems:
        details = {**base_details, "reason": problem.reason}
        fix = _CERT_FIXES.get(problem.reason, _CERT_FIXES[config_certs.UNREADABLE])
        summary = f"{problem.message} ({cert_path}, served by {labels})"
        if problem.reason == config_certs.NAME_MISMATCH:
            details["note"] = (
                "peers ask for the server_name unless /.well-known/matrix/server "
                "delegates to another host, which cannot be seen offline"
            )
            summary += "; fine only if a well-known delegates to a name it covers"
        if problem.fatal:
            results.append(fail(TLS_LISTENER, summary, fix=fix, details=details))
        else:
            results.append(warn(TLS_LISTENER, summary, fix=fix, details=details))
    if results:
        return results
    days = int(((analysis.not_after or now) - now) // config_certs.SECONDS_PER_DAY)
    return [
        ok(
            TLS_LISTENER,
            f"{cert_path} holds a chain of {analysis.chain_length} valid for {host} "
            f"for {days} more days, and the key matches",
            details=base_details,
        )
    ]


_FULLCHAIN_FIX = (
    "Point `tls_certificate_path` in homeserver.yaml at the full chain (leaf first, "
    "then the intermediates: certbot's fullchain.pem, not cert.pem)."
)
_CERT_FIXES = {
    config_certs.UNREADABLE: "Make `tls_certificate_path` in homeserver.yaml point at a "
    "PEM file the Synapse user can read.",
    config_certs.NOT_PEM: "Convert the certificate to PEM (`openssl x509 -inform der "
    "-in cert.der -out cert.pem`) and set `tls_certificate_path` to it.",
    config_certs.KEY_UNREADABLE: "Set `tls_private_key_path` in homeserver.yaml to the "
    "unencrypted PEM key of the certificate, readable by the Synapse user.",
    config_certs.KEY_MISMATCH: "Set `tls_private_key_path` to the key the certificate "
    "was issued for (`openssl x509 -noout -pubkey -in cert.pem` and `openssl pkey "
    "-pubout -in key.pem` must print the same key).",
    config_certs.EXPIRED: "Renew the certificate (e.g. `certbot renew`) and restart "
    "Synapse so it loads the new `tls_certificate_path`.",
    config_certs.EXPIRING_SOON: "Renew the certificate before it expires and check "
    "that renewal is automated and Synapse is restarted afterwards.",
    config_certs.NOT_YET_VALID: "Check the system clock, or use a certificate that is "
    "already valid.",
    config_certs.SELF_SIGNED: "Use a certificate from a public CA (e.g. Let's Encrypt) "
    "for the server name; peers do not accept self-signed certificates.",
    config_certs.MISSING_INTERMEDIATE: _FULLCHAIN_FIX,
    config_certs.UNTRUSTED_ISSUER: "Use a certificate from a CA that peers trust (a "
    "public CA), or, in a private federation, add your CA to every peer's "
    "`federation_custom_ca_list`.",
    config_certs.NAME_MISMATCH: "Get a certificate whose subject alternative names "
    "include the server_name (or the host your .well-known delegates to).",
}
