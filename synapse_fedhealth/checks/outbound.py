"""The outbound direction (SPEC 4.6): pure judges for `outbound.reach` and
`outbound.destinations`.

`outbound.reach` is judged from what Synapse's own federation client did
(`OutboundProbe`, gathered by `engine.outbound`) plus what we learnt around
it: the hosts Synapse would connect to, what the system resolver says of
them, and whether the outbound proxy applies. Synapse's own errors misname
some causes (a blocked address surfaces as a DNS lookup failure, a dead
proxy as a bare connection refusal), so the cause is named from those facts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attr

from synapse_fedhealth.report import CheckResult, fail, ok, skip, warn

OUTBOUND_REACH = "outbound.reach"
OUTBOUND_DESTINATIONS = "outbound.destinations"
VERSION_PATH = "/_matrix/federation/v1/version"
KEYS_PATH = "/_matrix/key/v2/server"
MAX_VALUE_CHARS = 200
MAX_NAMED = 5  # the worst few destinations, by name, in a summary
# SPEC 4.6: at least this many destinations that worked before, all failing
# now, means our own sending is broken rather than theirs.
MIN_FAILING_FOR_BROKEN = 3

# details.reason values (SPEC 4.6).
BLOCKED = "blocked_by_ip_range"
PROXY = "proxy"
DNS = "dns"
REFUSED = "refused"
TIMEOUT = "timeout"
TLS_VERSION = "tls_version"
CERTIFICATE = "certificate"
HTTP_STATUS = "http_status"
WRONG_SERVER = "wrong_server"

FIXES: Mapping[str, str] = {
    BLOCKED: "{server} resolves to {addresses}, inside `ip_range_blacklist` "
    "(Synapse's default blocks private, loopback and CGNAT ranges). If that "
    "server is meant to be reached (a private federation), add its range to "
    "`ip_range_whitelist` in homeserver.yaml; otherwise its DNS is wrong.",
    PROXY: "Federation goes through the outbound proxy {proxy} (`https_proxy` "
    "in homeserver.yaml or the https_proxy / HTTPS_PROXY environment variable) "
    "and that proxy failed: {error}. Start the proxy, correct the setting, or "
    "list the host in `no_proxy_hosts`.",
    DNS: "Synapse's resolver (the system resolver: /etc/resolv.conf, "
    "/etc/hosts, nsswitch) can't resolve {hosts}. Fix the nameservers of the "
    "host or container Synapse runs in; the module's `dns_servers` does not "
    "change what Synapse itself uses.",
    REFUSED: "{server} refused the connection at {hosts}: outbound TCP is "
    "blocked (a firewall or egress policy) or that server is down. Allow "
    "outbound TCP to port 8448 and 443.",
    TIMEOUT: "Nothing answered within the time limit at {hosts}: an egress "
    "firewall dropping packets, or a slow remote. Allow outbound TCP to port "
    "8448 and 443.",
    TLS_VERSION: "No common TLS version with {server}: "
    "`federation_client_minimum_tls_version` ({minimum}) is above what it "
    "offers. Lower it to 1.2 in homeserver.yaml.",
    CERTIFICATE: "Synapse rejects the certificate of {server} ({cert_reason}). "
    "If `federation_custom_ca_list` is set it replaces the public roots: add "
    "the CA that signs it, or remove the list; "
    "`federation_certificate_verification_whitelist` skips the check for "
    "named hosts.",
    HTTP_STATUS: "{server} answered HTTP {status} at {path}: it is up but not "
    "serving federation there, or a proxy in between rewrote the answer.",
    WRONG_SERVER: "{path} at {server} names another server ({other}): the "
    "name leads to a different homeserver, or a forward proxy intercepts the "
    "traffic.",
}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class HostLookup:
    """A host Synapse would connect to, and what the system resolver says of
    it (unfiltered: before Synapse's IP range filter)."""

    host: str
    port: int
    addresses: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()  # those `ip_range_blacklist` refuses
    error: str = ""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PathAnswer:
    """One request through Synapse's federation agent."""

    path: str
    status: int | None = None
    body: bytes = attr.ib(default=b"", repr=False)
    # The exception and what it wraps: "TypeName: message" each.
    error_chain: tuple[str, ...] = ()
    timed_out: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class OutboundProbe:
    """What reaching one server as Synapse's own client showed."""

    server_name: str
    answers: tuple[PathAnswer, ...] = ()
    delegated_to: str | None = None  # m.server of its well-known
    hosts: tuple[HostLookup, ...] = ()
    proxy: str | None = None  # the https proxy federation goes through
    # Federation to this host goes through workers (outbound_federation_restricted_to).
    via_workers: tuple[str, ...] = ()
    minimum_tls_version: str = "1"
    # Why fetching its /.well-known/matrix/server failed, if it did: Synapse
    # then ignores the delegation silently and tries the name itself.
    well_known_error: tuple[str, ...] = ()
    elapsed_ms: int = 0
    error: str = ""  # the probe could not run at all


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Cause:
    reason: str
    summary: str
    fix: str
    cert_reason: str | None = None


_CERT_REASONS: tuple[tuple[str, str], ...] = (
    ("certificate has expired", "expired"),
    ("not yet valid", "not_yet_valid"),
    ("self-signed", "self_signed"),
    ("self signed", "self_signed"),
    ("unable to get local issuer", "untrusted_issuer"),
    ("unable to verify the first certificate", "missing_intermediate"),
    ("unable to get issuer certificate", "missing_intermediate"),
    ("verificationerror", "name_mismatch"),
    ("hostname", "name_mismatch"),
    ("doesn't match", "name_mismatch"),
)
_TLS_VERSION_MARKERS = (
    "protocol version",
    "unsupported protocol",
    "no protocols available",
    "wrong version number",
    "version too low",
)
_CERTIFICATE_MARKERS = ("certificate", "verificationerror", "verify failed")


def _text(answer: PathAnswer) -> str:
    return " | ".join(answer.error_chain).lower()


def certificate_reason(text: str) -> str:
    for marker, reason in _CERT_REASONS:
        if marker in text:
            return reason
    return "untrusted_issuer"


def _hosts_text(probe: OutboundProbe) -> str:
    if not probe.hosts:
        return probe.delegated_to or probe.server_name
    return ", ".join(f"{h.host}:{h.port}" for h in probe.hosts[:MAX_NAMED])


def _is_tls_failure(text: str) -> bool:
    return any(m in text for m in (*_TLS_VERSION_MARKERS, *_CERTIFICATE_MARKERS)) or (
        "ssl" in text
    )


def classify(probe: OutboundProbe, answer: PathAnswer) -> Cause:
    """Why `answer` did not come back 200 with the right server's data."""
    cause = _classify_answer(probe, answer)
    well_known = " | ".join(probe.well_known_error).lower()
    if (
        cause.reason in (REFUSED, TIMEOUT, DNS)
        and well_known
        and _is_tls_failure(well_known)
        and probe.proxy is None
    ):
        # The well-known's TLS failed, so Synapse dropped the delegation and
        # went to <name>:8448, which failed in turn: the certificate is the
        # cause, not the fallback.
        reason = certificate_reason(well_known)
        summary = (
            f"Synapse rejects the certificate of https://{probe.server_name}/ "
            f"({reason}), so it ignores its well-known delegation; then "
            f"{cause.summary}"
        )
        fix = FIXES[CERTIFICATE].format(server=probe.server_name, cert_reason=reason)
        return Cause(CERTIFICATE, summary, fix, reason)
    return cause


def _classify_answer(probe: OutboundProbe, answer: PathAnswer) -> Cause:
    text = _text(answer)
    server = probe.server_name
    hosts = _hosts_text(probe)
    error = (answer.error_chain[0] if answer.error_chain else "")[:MAX_VALUE_CHARS]
    blocked = [a for h in probe.hosts for a in h.blocked]
    resolved = [a for h in probe.hosts for a in h.addresses]

    def cause(reason: str, summary: str, **fmt: Any) -> Cause:
        values = {
            "server": server,
            "hosts": hosts,
            "error": error,
            "proxy": probe.proxy,
            "path": answer.path,
            "minimum": probe.minimum_tls_version,
            "addresses": ", ".join(blocked[:MAX_NAMED]),
            "status": answer.status,
            **fmt,
        }
        return Cause(
            reason, summary, FIXES[reason].format(**values), fmt.get("cert_reason")
        )

    if answer.status is not None:
        return cause(
            HTTP_STATUS, f"{server} answered HTTP {answer.status} at {answer.path}"
        )
    if "ip address blocked" in text:
        return cause(
            BLOCKED,
            f"{server} is an IP address inside ip_range_blacklist; Synapse refuses it",
        )
    if probe.proxy is not None and (
        "proxy" in text
        or "connectionrefused" in text
        or "dnslookuperror" in text
        or "connectingcancellederror" in text
    ):
        # With a proxy Synapse resolves and connects to the proxy only: the
        # target's name is resolved by the proxy, so these errors are the
        # proxy's. (SRV lookups stay local, but they fall back to the name.)
        return cause(
            PROXY, f"the outbound proxy {probe.proxy} failed for {server}: {error}"
        )
    if "dnslookuperror" in text or "no results for hostname" in text:
        if blocked:
            return cause(
                BLOCKED,
                f"{hosts} resolves to {', '.join(blocked[:MAX_NAMED])}, inside "
                "ip_range_blacklist: Synapse drops the answer and logs it as a DNS "
                "lookup failure",
            )
        if not resolved:
            return cause(DNS, f"Synapse's resolver can't resolve {hosts}")
    if answer.timed_out or "timeout" in text or "timed out" in text:
        if "srvlookuptimeout" in text or (
            probe.hosts and all(h.error and not h.addresses for h in probe.hosts)
        ):
            return cause(DNS, f"Synapse's resolver did not answer for {hosts}")
        if probe.proxy is not None:
            return cause(
                PROXY, f"the outbound proxy {probe.proxy} did not answer for {server}"
            )
        return cause(TIMEOUT, f"reaching {server} at {hosts} timed out")
    if any(marker in text for marker in _TLS_VERSION_MARKERS):
        return cause(
            TLS_VERSION,
            f"no common TLS version with {server} (minimum "
            f"{probe.minimum_tls_version})",
        )
    if any(marker in text for marker in _CERTIFICATE_MARKERS) or "ssl" in text:
        reason = certificate_reason(text)
        return cause(
            CERTIFICATE,
            f"Synapse rejects the certificate of {server} ({reason})",
            cert_reason=reason,
        )
    if "refused" in text:
        return cause(REFUSED, f"{server} refused the connection at {hosts}")
    if "dnslookuperror" in text:
        return cause(DNS, f"Synapse's resolver can't resolve {hosts}")
    return cause(REFUSED, f"could not connect to {server} at {hosts}: {error}")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _answer_problem(probe: OutboundProbe, answer: PathAnswer) -> Cause | None:
    """None when `answer` is a good 200 for its path."""
    if answer.status != 200:
        return classify(probe, answer)
    obj = _json_object(answer.body)
    if answer.path == KEYS_PATH:
        named = obj.get("server_name") if obj else None
        if named != probe.server_name:
            other = str(named)[:MAX_VALUE_CHARS] if named is not None else "none"
            return Cause(
                WRONG_SERVER,
                f"the keys at {probe.server_name} name {other!r}",
                FIXES[WRONG_SERVER].format(
                    path=answer.path, server=probe.server_name, other=other
                ),
            )
    elif obj is None or not isinstance(obj.get("server"), dict):
        return Cause(
            HTTP_STATUS,
            f"{probe.server_name} answered 200 at {answer.path} without a server version",
            FIXES[HTTP_STATUS].format(
                server=probe.server_name, status=200, path=answer.path
            ),
        )
    return None


def _version(answer: PathAnswer) -> str | None:
    obj = _json_object(answer.body)
    server = obj.get("server") if obj else None
    if not isinstance(server, dict):
        return None
    name, version = server.get("name"), server.get("version")
    return f"{name} {version}"[:MAX_VALUE_CHARS]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerVerdict:
    server_name: str
    cause: Cause | None
    details: Mapping[str, Any]


def judge_server(probe: OutboundProbe, *, age_ms: int = 0) -> ServerVerdict:
    details: dict[str, Any] = {
        "server_name": probe.server_name,
        "elapsed_ms": probe.elapsed_ms,
        "age_ms": age_ms,
        "hosts": [f"{h.host}:{h.port}" for h in probe.hosts[:MAX_NAMED]],
    }
    if probe.delegated_to:
        details["delegated_to"] = probe.delegated_to
    if probe.proxy:
        details["proxy"] = probe.proxy
    if probe.via_workers:
        details["via_workers"] = list(probe.via_workers)
    if probe.error:
        cause = Cause(
            "error",
            f"could not probe {probe.server_name}: {probe.error[:MAX_VALUE_CHARS]}",
            "This is a bug in synapse-fedhealth; please report it with this summary.",
        )
        return ServerVerdict(probe.server_name, cause, {**details, "reason": "error"})
    for answer in probe.answers:
        problem = _answer_problem(probe, answer)
        if problem is not None:
            cause = problem
            details["reason"] = cause.reason
            details["path"] = answer.path
            if cause.cert_reason:
                details["certificate_reason"] = cause.cert_reason
            if answer.status is not None:
                details["http_status"] = answer.status
            if answer.error_chain:
                details["error"] = [e[:MAX_VALUE_CHARS] for e in answer.error_chain[:4]]
            blocked = [a for h in probe.hosts for a in h.blocked]
            if blocked:
                details["blocked_addresses"] = blocked[:MAX_NAMED]
            return ServerVerdict(probe.server_name, cause, details)
    version = next(
        (
            v
            for a in probe.answers
            if a.path == VERSION_PATH
            for v in [_version(a)]
            if v
        ),
        None,
    )
    if version:
        details["version"] = version
    return ServerVerdict(probe.server_name, None, details)


def judge_outbound_reach(
    probes: Sequence[tuple[OutboundProbe, int]], *, source: str
) -> CheckResult:
    """`probes` are (probe, age_ms) pairs; `source` says where the list came
    from ("outbound_probe_servers" or "trusted_key_servers")."""
    if not probes:
        return skip(
            OUTBOUND_REACH,
            f"skipped: no servers to probe ({source} is empty)",
            details={"source": source},
        )
    verdicts = [judge_server(p, age_ms=age) for p, age in probes]
    failing = [v for v in verdicts if v.cause is not None]
    reached = [v for v in verdicts if v.cause is None]
    details: dict[str, Any] = {
        "source": source,
        "servers": [dict(v.details) for v in verdicts],
        "reached": [v.server_name for v in reached],
        "age_ms": max(age for _, age in probes),
    }
    if not failing:
        return ok(
            OUTBOUND_REACH,
            f"Synapse's own federation client reaches {', '.join(details['reached'])}",
            details=details,
        )
    first = failing[0]
    assert first.cause is not None
    details["reason"] = first.cause.reason
    if first.cause.cert_reason:
        details["certificate_reason"] = first.cause.cert_reason
    fix = " ".join(dict.fromkeys(v.cause.fix for v in failing if v.cause))
    names = "; ".join(
        f"{v.server_name}: {v.cause.summary}" for v in failing[:MAX_NAMED] if v.cause
    )
    if reached:
        return warn(
            OUTBOUND_REACH,
            f"outbound federation reaches {len(reached)} of {len(verdicts)} servers; "
            f"{names}",
            fix=fix,
            details=details,
        )
    return fail(
        OUTBOUND_REACH,
        f"this server can't federate out ({first.cause.reason}): {names}",
        fix=fix,
        details=details,
    )


# -- outbound.destinations ---------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class DestinationRow:
    """A row of Synapse's destinations table."""

    destination: str
    retry_last_ts: int | None = None
    retry_interval: int | None = None
    failure_ts: int | None = None
    last_successful_stream_ordering: int | None = None

    @property
    def failing(self) -> bool:
        """In retry backoff: Synapse sets failure_ts on the first failure and
        clears it (and retry_interval) on the next success."""
        return bool(self.failure_ts) or bool(self.retry_interval)

    @property
    def succeeded_before(self) -> bool:
        return self.last_successful_stream_ordering is not None


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class DestinationsRecord:
    """What the read-only query of the destinations table returned."""

    total: int  # rows in the table: servers Synapse has sent to or tried
    failing: tuple[DestinationRow, ...]  # the worst, longest failing first
    failing_total: int
    failing_succeeded_before: int
    # Remote servers with a joined member in a room we are in (None: unknown).
    shared_room_servers: int | None = None


def judge_destinations(record: DestinationsRecord, *, now_ms: int) -> CheckResult:
    details: dict[str, Any] = {
        "destinations": record.total,
        "failing": record.failing_total,
        "failing_that_worked_before": record.failing_succeeded_before,
        "shared_room_servers": record.shared_room_servers,
        "worst": [
            {
                "destination": row.destination[:MAX_VALUE_CHARS],
                "failure_ts": row.failure_ts,
                "failing_for_ms": (now_ms - row.failure_ts) if row.failure_ts else None,
                "retry_interval_ms": row.retry_interval,
                "retry_last_ts": row.retry_last_ts,
                "succeeded_before": row.succeeded_before,
            }
            for row in record.failing[:MAX_NAMED]
        ],
    }
    shared = (
        f", {record.shared_room_servers} remote servers share rooms with us"
        if record.shared_room_servers is not None
        else ""
    )
    if not record.failing_total:
        return ok(
            OUTBOUND_DESTINATIONS,
            f"no destination is in retry backoff ({record.total} known{shared})",
            details=details,
        )
    names = ", ".join(_describe_row(row, now_ms) for row in record.failing[:MAX_NAMED])
    working = record.total - record.failing_total
    if record.failing_succeeded_before >= MIN_FAILING_FOR_BROKEN and working <= 0:
        details["reason"] = "all_failing"
        return fail(
            OUTBOUND_DESTINATIONS,
            f"Synapse's sending is failing to every destination "
            f"({record.failing_total}, {record.failing_succeeded_before} of which "
            f"worked before): {names}",
            fix="Many servers that worked before failing at once is our side: "
            "see outbound.reach for the cause (proxy, DNS, firewall, IP ranges, "
            "CA list), fix it, then Synapse retries on its own schedule.",
            details=details,
        )
    details["reason"] = "backoff"
    return warn(
        OUTBOUND_DESTINATIONS,
        f"{record.failing_total} of {record.total} destinations are in retry "
        f"backoff{shared}: {names}",
        fix="A few failing servers are usually their own problem (down, moved, "
        "misconfigured): nothing to fix here unless outbound.reach fails too. "
        "Synapse retries them on its own schedule; the admin API "
        "`DELETE /_synapse/admin/v1/federation/destinations/<name>/reset_connection` "
        "retries one now.",
        details=details,
    )


def _describe_row(row: DestinationRow, now_ms: int) -> str:
    name = row.destination[:MAX_VALUE_CHARS]
    if row.failure_ts:
        minutes = max(0, now_ms - row.failure_ts) // 60_000
        return f"{name} (failing for {minutes} min)"
    return name
