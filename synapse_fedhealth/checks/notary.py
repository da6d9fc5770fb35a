"""`federation.notary`: can the trusted key servers (notaries) fetch our key?

A notary fetches `/_matrix/key/v2/server` from us over the real Internet, so
its answer is the outside view this host cannot have. Synapse's notary
(synapse/rest/key/v2/remote_key_resource.py `query_keys`, 1.163) answers from
its cache when the cached copy is valid until at least the
`minimum_valid_until_ts` we ask for, fetches from us otherwise, and answers
200 with whatever it has (a stale copy, or nothing) when that fetch fails.

So the minimum we ask decides what "fresh" proves. The runner asks for the
`valid_until_ts` of the key response our public addresses serve right now
(seen by `federation.keys` in the same run): the newest response there is.
A notary that returns it has fetched it from the outside since our server
last refreshed it (Synapse refreshes it once less than half of
key_refresh_interval is left, local_key_resource.py); an older cached copy
makes the notary fetch from us again, and a stale answer means that fetch
failed. Without such a response (our addresses served none), the minimum
falls back to now + key_refresh_interval/2, less a margin.

The answer is checked the way Synapse's `PerspectivesKeyFetcher` checks it
(synapse/crypto/keyring.py:762-909): the notary's signature with the
configured `verify_keys`, and our own self-signature over the key response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attr

from synapse_fedhealth.checks.http_answer import (
    Headers,
    describe_answer,
    int_field,
    parse_json_object,
    request_details,
)
from synapse_fedhealth.homeserver import (
    HomeserverSnapshot,
    SigningKeyInfo,
    TrustedKeyServerInfo,
)
from synapse_fedhealth.matrix_names import parse_server_name
from synapse_fedhealth.net.addresses import FederationIpRanges
from synapse_fedhealth.report import CheckResult, fail, ok, skip, warn
from synapse_fedhealth.server_discovery import Resolution, Target
from synapse_fedhealth.signing import (
    decode_base64,
    served_key_map,
    signature_key_ids,
    signature_verifies_with_bytes,
)

NOTARY = "federation.notary"
NOTARY_QUERY_PATH = "/_matrix/key/v2/query"

MS_PER_MINUTE = 60 * 1000
# Room for the time between our query and the notary's fetch, and for a
# little clock skew between us and our own server (same host: small).
FRESHNESS_MARGIN_MS = 5 * MS_PER_MINUTE
MIN_FRESHNESS_MS = 5 * MS_PER_MINUTE
ERROR_MESSAGE_CHARS = 300

FIX_NOTARY_CANNOT_FETCH = (
    "The notary {notary} could not fetch this server's current key from the "
    "Internet, so remote servers most likely can't either. Check the "
    "discovery, connection and TLS results: the usual causes are a firewall "
    "or NAT that lets this host in but not the outside world, DNS that "
    "resolves differently outside (split horizon), a private address, or a "
    "certificate that only this host trusts."
)
FIX_NOTARY_OTHER_KEY = (
    "The notary {notary} fetched a different key for {server_name} than this "
    "Synapse holds: the outside world reaches another or an older server. "
    "See `federation.key_matches_local` and point DNS / the proxy at this "
    "Synapse."
)
FIX_NOTARY_UNREACHABLE = (
    "No outside view from {notary}: it could not be queried from this host. "
    "If the host can't reach it (egress firewall, proxy), this check can't "
    "help; set `notary_check: false` or list a reachable notary in "
    "`trusted_key_servers`."
)
FIX_NOTARY_BAD_ANSWER = (
    "The notary {notary} answered, but not with a usable key query response. "
    "If it is not a Matrix key server, remove it from `trusted_key_servers`."
)
FIX_NOTARY_SIGNATURE = (
    "The answer of {notary} is not signed with the `verify_keys` configured "
    "for it in `trusted_key_servers`, so this Synapse discards what it says "
    "(also about other servers' keys). Update `verify_keys` from "
    "https://{notary}/_matrix/key/v2/server, or remove them to skip the check."
)
FIX_NOTARY_TIMEOUT = (
    "The notary {notary} did not answer in time. It may be stuck trying to "
    "reach this server (a filtered port looks like this from the outside); "
    "see the connection results. If the notary is just slow, raise `timeout`."
)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class NotaryPlan:
    """Which notaries to ask, and the results for those not asked."""

    notaries: tuple[TrustedKeyServerInfo, ...]
    skipped: tuple[CheckResult, ...]


def plan_notary_checks(
    snapshot: HomeserverSnapshot, *, notary_check: bool
) -> NotaryPlan:
    """Decide which notaries to query; `skip` results say why the rest aren't."""
    if not notary_check:
        return NotaryPlan(
            notaries=(),
            skipped=(skip(NOTARY, "skipped: `notary_check` is off"),),
        )
    if not snapshot.trusted_key_servers:
        return NotaryPlan(
            notaries=(),
            skipped=(skip(NOTARY, "skipped: no `trusted_key_servers` are configured"),),
        )
    if not snapshot.signing_keys:
        return NotaryPlan(
            notaries=(),
            skipped=(skip(NOTARY, "skipped: this Synapse has no signing key loaded"),),
        )
    notaries = []
    skipped = []
    for notary in snapshot.trusted_key_servers:
        if notary.server_name == snapshot.server_name:
            skipped.append(
                skip(
                    NOTARY,
                    f"skipped: {notary.server_name} is this server itself: no "
                    "outside view",
                    target=notary.server_name,
                )
            )
        else:
            notaries.append(notary)
    return NotaryPlan(notaries=tuple(notaries), skipped=tuple(skipped))


def notary_minimum_valid_until_ts(now_ms: int, key_refresh_interval_ms: int) -> int:
    """The `minimum_valid_until_ts` to ask for (see the module docstring)."""
    freshness = max(
        key_refresh_interval_ms // 2 - FRESHNESS_MARGIN_MS, MIN_FRESHNESS_MS
    )
    return now_ms + freshness


def build_notary_query(
    server_name: str, key_ids: Sequence[str], minimum_valid_until_ts: int
) -> dict[str, Any]:
    """The body of `POST /_matrix/key/v2/query`."""
    return {
        "server_keys": {
            server_name: {
                key_id: {"minimum_valid_until_ts": minimum_valid_until_ts}
                for key_id in key_ids
            }
        }
    }


def notary_signature_problem(
    entry: Mapping[str, Any], notary: TrustedKeyServerInfo
) -> str | None:
    """Why the notary's own signature doesn't verify, or None when it does
    (as `_validate_perspectives_response` decides)."""
    if notary.verify_keys is None:
        return None
    signed_with = signature_key_ids(entry, notary.server_name)
    if not signed_with:
        return "not signed by the notary"
    known = [k for k in signed_with if k in notary.verify_keys]
    if not known:
        return (
            f"signed with {', '.join(sorted(signed_with))}, but the configured "
            f"keys are {', '.join(sorted(notary.verify_keys)) or '(none)'}"
        )
    for key_id in known:
        key_bytes = decode_base64(notary.verify_keys[key_id])
        if key_bytes is None or not signature_verifies_with_bytes(
            entry, notary.server_name, key_id, key_bytes
        ):
            return f"the signature with {key_id} does not verify"
    return None


# Entries of one answer that are judged (each may cost a signature check);
# a notary answers with one or two for one server and one key.
MAX_NOTARY_ENTRIES = 16


def _entries_for(
    answer: Mapping[str, Any], server_name: str
) -> list[Mapping[str, Any]]:
    """Our entries among the first MAX_NOTARY_ENTRIES of the answer."""
    entries = answer.get("server_keys")
    if not isinstance(entries, list):
        return []
    return [
        e
        for e in entries[:MAX_NOTARY_ENTRIES]
        if isinstance(e, Mapping) and e.get("server_name") == server_name
    ]


def _best_entry(
    entries: Sequence[Mapping[str, Any]], key_id: str
) -> Mapping[str, Any] | None:
    """The entry with our current key that is valid the longest."""
    best: Mapping[str, Any] | None = None
    best_ts = -1
    for entry in entries:
        if key_id not in served_key_map(entry.get("verify_keys")):
            continue
        ts = int_field(entry, "valid_until_ts")
        ts_value = ts if ts is not None else -1
        if best is None or ts_value > best_ts:
            best, best_ts = entry, ts_value
    return best


def judge_notary_answer(
    status: int,
    headers: Headers,
    body: bytes,
    *,
    notary: TrustedKeyServerInfo,
    server_name: str,
    signing_key: SigningKeyInfo,
    minimum_valid_until_ts: int,
    request: Mapping[str, Any],
) -> CheckResult:
    """Judge one notary's answer to our key query. Never raises."""
    name = notary.server_name
    details = request_details(
        request,
        notary=name,
        http_status=status,
        key_id=signing_key.key_id,
        minimum_valid_until_ts=minimum_valid_until_ts,
    )
    answer = _usable_answer(status, headers, body, name, details)
    if isinstance(answer, CheckResult):
        return answer
    entries = _entries_for(answer, server_name)
    key_id = signing_key.key_id
    if not entries:
        details["reason"] = "no_keys"
        return fail(
            NOTARY,
            f"the notary {name} has no key for {server_name}: it could not "
            "fetch it from us",
            fix=FIX_NOTARY_CANNOT_FETCH.format(notary=name),
            details=details,
            target=name,
        )

    notary_problem: str | None = None
    if notary.verify_keys is None:
        details["notary_signature"] = "not checked: no verify_keys configured"
    else:
        problems = [notary_signature_problem(e, notary) for e in entries]
        notary_problem = next((p for p in problems if p is not None), None)
        details["notary_signature"] = notary_problem or "valid"

    entry = _best_entry(entries, key_id)
    problem = (
        _missing_key(entries, key_id, name, server_name, details)
        if entry is None
        else _entry_problem(
            entry, signing_key, server_name, minimum_valid_until_ts, name, details
        )
    )
    if problem is not None:
        reason, summary, fix = problem
        details["reason"] = reason
        return fail(NOTARY, summary, fix=fix, details=details, target=name)
    if notary_problem is not None:
        details["reason"] = "notary_signature"
        return warn(
            NOTARY,
            f"the notary {name} fetched our current key, but its answer is "
            f"not signed as configured ({notary_problem})",
            fix=FIX_NOTARY_SIGNATURE.format(notary=name),
            details=details,
            target=name,
        )
    return ok(
        NOTARY,
        # The notary may answer from its cache: a copy that satisfies the
        # minimum (the response we serve now) was fetched from the outside
        # since our server last refreshed it, not necessarily by this query.
        f"the notary {name} holds our current key {key_id} and key response "
        "(valid until at least the one we serve now): it fetched it from "
        "the outside",
        details=details,
        target=name,
    )


def _usable_answer(
    status: int, headers: Headers, body: bytes, name: str, details: dict[str, Any]
) -> dict[str, Any] | CheckResult:
    """The answer's JSON object, or the warning that it has none: a notary
    that can't answer gives no outside view, which is not our failure."""
    if status != 200:
        details["reason"] = "notary_error"
        return warn(
            NOTARY,
            f"no outside view from {name}: it answered "
            + describe_answer(status, headers, body),
            fix=FIX_NOTARY_BAD_ANSWER.format(notary=name),
            details=details,
            target=name,
        )
    answer, problem = parse_json_object(body)
    if answer is None or not isinstance(answer.get("server_keys"), list):
        details["reason"] = "notary_bad_answer"
        return warn(
            NOTARY,
            f"no outside view from {name}: its answer is unusable "
            f"({problem or 'no `server_keys` list'})",
            fix=FIX_NOTARY_BAD_ANSWER.format(notary=name),
            details=details,
            target=name,
        )
    return answer


def _missing_key(
    entries: Sequence[Mapping[str, Any]],
    key_id: str,
    name: str,
    server_name: str,
    details: dict[str, Any],
) -> tuple[str, str, str]:
    """(reason, summary, fix) when no entry holds our current key."""
    known = sorted({k for e in entries for k in served_key_map(e.get("verify_keys"))})
    old = any(key_id in served_key_map(e.get("old_verify_keys")) for e in entries)
    details["notary_key_ids"] = known
    how = "only as an old key" if old else "not at all"
    return (
        "old_key" if old else "other_key",
        f"the notary {name} knows {server_name}'s keys "
        f"{', '.join(known) or '(none)'}, and our current key {key_id} "
        f"{how}: it could not fetch our current key response",
        (FIX_NOTARY_CANNOT_FETCH if old else FIX_NOTARY_OTHER_KEY).format(
            notary=name, server_name=server_name
        ),
    )


def _entry_problem(
    entry: Mapping[str, Any],
    signing_key: SigningKeyInfo,
    server_name: str,
    minimum_valid_until_ts: int,
    name: str,
    details: dict[str, Any],
) -> tuple[str, str, str] | None:
    """(reason, summary, fix) when the entry with our key is not usable."""
    key_id = signing_key.key_id
    ours = decode_base64(signing_key.verify_key_base64)
    theirs = served_key_map(entry.get("verify_keys")).get(key_id)
    other_key_fix = FIX_NOTARY_OTHER_KEY.format(notary=name, server_name=server_name)
    if ours is None or theirs != ours:
        return (
            "key_mismatch",
            f"the notary {name} holds another public key under {key_id} than "
            "this Synapse",
            other_key_fix,
        )
    if not signature_verifies_with_bytes(entry, server_name, key_id, ours):
        return (
            "self_signature",
            f"the notary {name} returned our key without a valid signature of "
            f"{server_name}: remote servers reject such a key response",
            other_key_fix,
        )
    valid_until = int_field(entry, "valid_until_ts")
    details["valid_until_ts"] = valid_until
    if valid_until is None or valid_until < minimum_valid_until_ts:
        return (
            "stale",
            f"the notary {name} only has a stale copy of our key (valid until "
            f"{valid_until}, asked for at least {minimum_valid_until_ts}): it "
            "could not fetch a fresh one from us",
            FIX_NOTARY_CANNOT_FETCH.format(notary=name),
        )
    return None


def judge_notary_error(
    reason: str,
    message: str,
    *,
    notary: TrustedKeyServerInfo,
    request: Mapping[str, Any],
) -> CheckResult:
    """The notary gave no HTTP answer (`reason`: "timeout", "refused", ...).

    A timeout is a `fail` (SPEC 3: a probe that did not finish is a fail with
    reason timeout); a notary we can't connect to at all is a `warn`: no
    outside view, but nothing known to be wrong with us."""
    name = notary.server_name
    details = request_details(request, notary=name, reason=reason)
    if message:
        details["error"] = message[:ERROR_MESSAGE_CHARS]
    if reason == "timeout":
        return fail(
            NOTARY,
            f"the key query to the notary {name} timed out",
            fix=FIX_NOTARY_TIMEOUT.format(notary=name),
            details=details,
            target=name,
        )
    return warn(
        NOTARY,
        f"no outside view: the notary {name} can't be reached from here "
        f"({reason}" + (f": {message[:ERROR_MESSAGE_CHARS]}" if message else "") + ")",
        fix=FIX_NOTARY_UNREACHABLE.format(notary=name),
        details=details,
        target=name,
    )


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class NotaryReach:
    """Which of a notary's targets this homeserver's own federation client
    could connect to, by its ip_range_blacklist / ip_range_whitelist."""

    usable: tuple[Target, ...]
    refused: tuple[str, ...]  # the addresses the ranges refuse


def notary_reach(
    resolution: Resolution, ip_ranges: FederationIpRanges | None
) -> NotaryReach:
    """As Synapse's `_IPBlockingResolver` (synapse/http/client.py) decides:
    a host with one refused address yields no address at all, so all of its
    targets are unusable; an IP literal that is the notary's name itself is
    checked against the blacklist alone (`BlocklistingAgentWrapper`)."""
    if ip_ranges is None:
        return NotaryReach(usable=resolution.targets, refused=())
    try:
        name_is_ip = parse_server_name(resolution.server_name, strict=False).ip
    except ValueError:
        name_is_ip = None
    refused: dict[str, None] = {}
    refused_hosts: set[str] = set()
    for host in resolution.hosts:
        bad = [a for a in host.addresses if ip_ranges.refuses(a)]
        if bad:
            refused_hosts.add(host.host)
            refused.update(dict.fromkeys(bad))
    for literal in resolution.literal_targets:
        if ip_ranges.refuses(literal, ip_literal=name_is_ip is not None):
            refused_hosts.add(literal)
            refused[literal] = None
    usable = tuple(t for t in resolution.targets if t.hostname not in refused_hosts)
    return NotaryReach(usable=usable, refused=tuple(refused))


def judge_notary_blocked(
    refused: Sequence[str],
    *,
    notary: TrustedKeyServerInfo,
    request: Mapping[str, Any],
) -> CheckResult:
    """Every address of the notary is refused by this homeserver's own
    ip_range_blacklist: Synapse can't ask it either, so neither do we."""
    name = notary.server_name
    listed = ", ".join(refused[:8]) + (", ..." if len(refused) > 8 else "")
    details = request_details(request, notary=name, reason="blocked_by_ip_range")
    details["refused"] = list(refused)
    return warn(
        NOTARY,
        f"no outside view from the notary {name}: this server's "
        f"ip_range_blacklist refuses {listed}; Synapse cannot ask this notary "
        "either; not asked",
        fix=(
            f"List a notary this server may reach in `trusted_key_servers`, or, "
            f"if {name} is part of a private federation, add its addresses to "
            "`ip_range_whitelist` (or set `notary_check: false`)."
        ),
        details=details,
        target=name,
    )
