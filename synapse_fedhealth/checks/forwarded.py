"""`proxy.forwarded_headers`: what the reverse proxy passes to Synapse.

Our run sends `GET /_synapse/client/fedhealth/echo/<nonce>` through the
public path; the echo resource (synapse_fedhealth/echo.py) answers with an
`EchoRecord`: the forwarded headers and Host that reached Synapse, and which
listener received them. This module defines that record and judges it.

The answer carries an HMAC-SHA256 of the nonce and the exact body, keyed by
the nonce secret (header `X-Fedhealth-Echo-MAC`, made by
`synapse_fedhealth.echo.NonceBook.sign_answer`): given a verifier, the judge
believes only answers this homeserver made, not any server that mimics one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attr

from synapse_fedhealth.checks.http_answer import (
    Headers,
    describe_answer,
    header_value,
    parse_json_object,
    request_details,
)
from synapse_fedhealth.checks.proxy_detect import (
    APACHE,
    CADDY,
    NGINX,
    TRAEFIK,
    ProxyGuess,
    proxy_fix,
    with_proxy,
)
from synapse_fedhealth.homeserver import ListenerInfo
from synapse_fedhealth.matrix_names import bare_host
from synapse_fedhealth.report import CheckResult, ok, skip, warn

FORWARDED_HEADERS = "proxy.forwarded_headers"
ECHO_PATH = "/_synapse/client/fedhealth/echo"
ECHO_RECORD_TYPE = "fedhealth.echo"
ECHO_MAC_HEADER = "X-Fedhealth-Echo-MAC"
# (nonce, body, mac) -> did this homeserver sign exactly this answer?
EchoAnswerVerifier = Callable[[str, bytes, str], bool]
# Longest header value kept: X-Forwarded-For chains stay readable, a hostile
# client can't make the record large.
MAX_HEADER_CHARS = 256
DEFAULT_PORTS = {"https": 443, "http": 80}

XFF_SNIPPETS = {
    NGINX: "`proxy_set_header X-Forwarded-For $remote_addr;`",
    APACHE: "mod_proxy_http sends it unless `ProxyAddHeaders Off`",
    CADDY: "`reverse_proxy` sends it by default (check for a `header_up -X-Forwarded-For`)",
    TRAEFIK: "sends it by default (check `forwardedHeaders` on the entry point)",
}
XFP_SNIPPETS = {
    NGINX: "`proxy_set_header X-Forwarded-Proto $scheme;`",
    APACHE: '`RequestHeader set X-Forwarded-Proto "https"`',
    CADDY: "`reverse_proxy` sends it by default",
    TRAEFIK: "sends it by default",
}
HOST_SNIPPETS = {
    NGINX: "`proxy_set_header Host $host;`",
    APACHE: "`ProxyPreserveHost On`",
    CADDY: "keeps it unless told otherwise (no `header_up Host {upstream_hostport}`)",
    TRAEFIK: "keeps it unless `passHostHeader: false`",
}
DOCS_ANCHOR = "proxyforwarded_headers"


def fix_xff(proxy: str | None) -> str:
    return proxy_fix(
        "Make the proxy send the client address", XFF_SNIPPETS, proxy, DOCS_ANCHOR
    )


def fix_xfp(proxy: str | None) -> str:
    return proxy_fix("Make the proxy send the scheme", XFP_SNIPPETS, proxy, DOCS_ANCHOR)


def fix_host(proxy: str | None) -> str:
    return proxy_fix(
        "Make the proxy pass the original Host header",
        HOST_SNIPPETS,
        proxy,
        DOCS_ANCHOR,
    )


FIX_ENABLE_X_FORWARDED = (
    "Set `x_forwarded: true` on {listener} in homeserver.yaml: it sits behind "
    "a reverse proxy, and without it Synapse records the proxy's address for "
    "every client (logs, rate limiting, IP ban lists, the devices list)."
)
FIX_FOREIGN_ECHO = (
    "Check where the public path (public_baseurl) leads: the answer to "
    f"{ECHO_PATH} was not signed by this homeserver, so another server (or "
    "something that rewrites answers, such as a caching proxy) answers for it. "
    "Route /_synapse/client to this Synapse."
)
FIX_DISABLE_X_FORWARDED = (
    "{listener} is reached directly, without a proxy, yet trusts "
    "X-Forwarded-For (`x_forwarded: true`): any client can claim any IP. Set "
    "`x_forwarded: false`, or firewall the port so only the proxy reaches it."
)


def _header_text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value[:MAX_HEADER_CHARS]


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class EchoRecord:
    """What reached Synapse for one echo request."""

    x_forwarded_for: str | None = None
    x_forwarded_proto: str | None = None
    x_forwarded_host: str | None = None
    forwarded: str | None = None  # RFC 7239 `Forwarded`
    host: str | None = None
    peer: str | None = None  # the TCP peer as Synapse saw it (the proxy, if any)
    tls: bool = False  # was the connection into Synapse itself TLS?
    listener_port: int | None = None
    listener_tag: str | None = None
    # Does the listener honour X-Forwarded-* (`x_forwarded: true`)?
    listener_x_forwarded: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "type": ECHO_RECORD_TYPE,
            "x_forwarded_for": self.x_forwarded_for,
            "x_forwarded_proto": self.x_forwarded_proto,
            "x_forwarded_host": self.x_forwarded_host,
            "forwarded": self.forwarded,
            "host": self.host,
            "peer": self.peer,
            "tls": self.tls,
            "listener": {
                "port": self.listener_port,
                "tag": self.listener_tag,
                "x_forwarded": self.listener_x_forwarded,
            },
        }

    @classmethod
    def from_json(cls, obj: object) -> EchoRecord | None:
        """Parse an echo answer; None unless it is one. Never raises."""
        if not isinstance(obj, Mapping) or obj.get("type") != ECHO_RECORD_TYPE:
            return None
        listener = obj.get("listener")
        if not isinstance(listener, Mapping):
            listener = {}
        port = listener.get("port")
        return cls(
            x_forwarded_for=_header_text(obj.get("x_forwarded_for")),
            x_forwarded_proto=_header_text(obj.get("x_forwarded_proto")),
            x_forwarded_host=_header_text(obj.get("x_forwarded_host")),
            forwarded=_header_text(obj.get("forwarded")),
            host=_header_text(obj.get("host")),
            peer=_header_text(obj.get("peer")),
            tls=obj.get("tls") is True,
            listener_port=port if type(port) is int else None,
            listener_tag=_header_text(listener.get("tag")),
            listener_x_forwarded=listener.get("x_forwarded") is True,
        )


def normalise_host(host: str, scheme: str) -> str:
    """`Example.COM:443` → `example.com` for https; keeps other ports."""
    host = host.strip().lower()
    default_port = DEFAULT_PORTS.get(scheme)
    if default_port is not None and host.endswith(f":{default_port}"):
        host = host[: -len(f":{default_port}")]
    return host


def _listener_for(
    record: EchoRecord, listeners: Sequence[ListenerInfo]
) -> ListenerInfo | None:
    for listener in listeners:
        if listener.type == "http" and listener.port == record.listener_port:
            if record.listener_tag is None or listener.tag in (
                None,
                record.listener_tag,
            ):
                return listener
    return None


def _listener_name(record: EchoRecord, listener: ListenerInfo | None) -> str:
    if listener is not None:
        return listener.label
    if record.listener_port is not None:
        return f"the listener on port {record.listener_port}"
    return f"the listener {record.listener_tag or '(unknown)'}"


def judge_forwarded_headers(
    status: int,
    headers: Headers,
    body: bytes,
    *,
    sent_host: str,
    sent_scheme: str = "https",
    listeners: Sequence[ListenerInfo] = (),
    request: Mapping[str, Any],
    target: str | None = None,
    nonce: str | None = None,
    verify_answer: EchoAnswerVerifier | None = None,
    port_optional: bool = False,
    proxy: ProxyGuess | None = None,
) -> CheckResult:
    """Judge the echo answer received through the public path. Never raises.

    `port_optional`: the Host may arrive without the port of `sent_host` (a
    federation path: peers send `host:8448`, proxies pass `$host`).
    `proxy`: the reverse proxy the answer showed; its snippet comes first.

    With `nonce` and `verify_answer` (the issuing `NonceBook.verify_answer`),
    an answer without a valid `X-Fedhealth-Echo-MAC` is not believed: unsigned,
    a `skip`; signed with another key, a `warn`. Without them every well-formed
    answer is believed.
    """
    details = with_proxy(request_details(request, http_status=status), proxy)
    proxy_name = proxy.name if proxy is not None else None
    obj, _ = parse_json_object(body) if status == 200 else (None, "")
    record = EchoRecord.from_json(obj)
    if record is None:
        details["reason"] = "not_routed"
        return skip(
            FORWARDED_HEADERS,
            f"skipped: the public path does not route {ECHO_PATH} to this "
            "Synapse (" + describe_answer(status, headers, body) + ")",
            details=details,
            target=target,
        )
    if nonce is not None and verify_answer is not None:
        unbelieved = _unauthenticated(
            headers, body, nonce, verify_answer, details, target
        )
        if unbelieved is not None:
            return unbelieved
    details["received"] = record.to_json()
    listener = _listener_for(record, listeners)
    where = _listener_name(record, listener)
    details["listener"] = where
    if listener is not None:
        # Lets config.x_forwarded judge this listener definitely next time.
        details["listener_index"] = listener.index

    # An HTTP proxy shows itself by its headers, or by terminating TLS in
    # front of a plain listener. A different port alone proves nothing: NAT
    # port forwarding and TCP (SNI) passthrough can't add headers, and
    # Synapse then sees the real client anyway.
    proxied = (
        record.x_forwarded_for is not None
        or record.x_forwarded_proto is not None
        or record.forwarded is not None
        or (sent_scheme == "https" and not record.tls)
    )
    details["proxied"] = proxied

    problems, fixes = _problems(
        record,
        proxied=proxied,
        sent_host=sent_host,
        sent_scheme=sent_scheme,
        port_optional=port_optional,
        where=where,
        proxy_name=proxy_name,
    )
    if problems:
        details["problems"] = problems
        return warn(
            FORWARDED_HEADERS,
            "; ".join(problems),
            fix=" ".join(dict.fromkeys(fixes)),
            details=details,
            target=target,
        )
    if proxied:
        summary = (
            "X-Forwarded-For, X-Forwarded-Proto and the original Host reach "
            f"{where}, which uses them (`x_forwarded: true`)"
        )
    else:
        summary = (
            f"no reverse proxy in front of {where}; it does not trust "
            "forwarded headers (`x_forwarded: false`), as it should"
        )
    return ok(FORWARDED_HEADERS, summary, details=details, target=target)


def _problems(
    record: EchoRecord,
    *,
    proxied: bool,
    sent_host: str,
    sent_scheme: str,
    port_optional: bool,
    where: str,
    proxy_name: str | None,
) -> tuple[list[str], list[str]]:
    """What is wrong with the headers that arrived, and the fix for each."""
    problems: list[str] = []
    fixes: list[str] = []
    if proxied:
        if record.x_forwarded_for is None:
            problems.append("X-Forwarded-For did not arrive")
            fixes.append(fix_xff(proxy_name))
        if record.x_forwarded_proto is None:
            problems.append("X-Forwarded-Proto did not arrive")
            fixes.append(fix_xfp(proxy_name))
        elif record.x_forwarded_proto.strip().lower() != sent_scheme:
            problems.append(
                f"X-Forwarded-Proto arrived as {record.x_forwarded_proto!r} for an "
                f"{sent_scheme} request"
            )
            fixes.append(fix_xfp(proxy_name))
    accepted = {normalise_host(sent_host, sent_scheme)}
    if port_optional:
        accepted.add(normalise_host(bare_host(sent_host), sent_scheme))
    if record.host is None or normalise_host(record.host, sent_scheme) not in accepted:
        problems.append(
            f"the Host header arrived as {record.host!r}, not {sent_host!r}"
        )
        fixes.append(fix_host(proxy_name))
    if proxied and not record.listener_x_forwarded:
        problems.append(
            f"{where} has `x_forwarded` off, so Synapse ignores the proxy's "
            f"headers and sees {record.peer or 'the proxy'} as every client"
        )
        fixes.append(FIX_ENABLE_X_FORWARDED.format(listener=where))
    if not proxied and record.listener_x_forwarded:
        problems.append(
            f"{where} is reached without a proxy but has `x_forwarded: true`"
        )
        fixes.append(FIX_DISABLE_X_FORWARDED.format(listener=where))
    return problems, fixes


def _unauthenticated(
    headers: Headers,
    body: bytes,
    nonce: str,
    verify_answer: EchoAnswerVerifier,
    details: dict[str, Any],
    target: str | None,
) -> CheckResult | None:
    """None when the answer's MAC is ours; else the result to report."""
    mac = header_value(headers, ECHO_MAC_HEADER)
    if mac is None:
        details["reason"] = "unauthenticated"
        return skip(
            FORWARDED_HEADERS,
            f"skipped: the echo answer did not come from this server: it has no "
            f"{ECHO_MAC_HEADER} (another server, or an older synapse-fedhealth, "
            "answered)",
            details=details,
            target=target,
        )
    try:
        genuine = verify_answer(nonce, body, mac.strip())
    except Exception:  # a verifier must not turn into an engine error
        genuine = False
    if genuine:
        return None
    details["reason"] = "bad_mac"
    return warn(
        FORWARDED_HEADERS,
        f"the echo answer did not come from this server: its {ECHO_MAC_HEADER} "
        "is not this homeserver's signature of the answer",
        fix=FIX_FOREIGN_ECHO,
        details=details,
        target=target,
    )


def judge_forwarded_headers_error(
    reason: str, message: str, *, request: Mapping[str, Any], target: str | None = None
) -> CheckResult:
    """The echo request got no HTTP answer. A timeout is reported as such (a
    warn: this check can't break federation on its own); any other error is
    the reachability checks' to report, so this one skips."""
    details = request_details(request, reason=reason)
    if message:
        details["error"] = message[:MAX_HEADER_CHARS]
    if reason == "timeout":
        return warn(
            FORWARDED_HEADERS,
            f"the echo request through the public path ({ECHO_PATH}) timed out",
            fix="Something on the public path hangs on /_synapse/client; see "
            "the connection checks.",
            details=details,
            target=target,
        )
    return skip(
        FORWARDED_HEADERS,
        f"skipped: the echo request through the public path got no answer "
        f"({reason}" + (f": {message[:MAX_HEADER_CHARS]}" if message else "") + ")",
        details=details,
        target=target,
    )
