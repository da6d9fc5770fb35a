"""`federation.key_matches_local`: is the key served at the public address the
key this Synapse holds?

If not, the public path reaches another server (or an older install with an
old key file): remote servers verify our events and requests with the key
they fetch there, and reject them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synapse_fedhealth.checks.http_answer import parse_json_object, request_details
from synapse_fedhealth.homeserver import SigningKeyInfo
from synapse_fedhealth.report import CheckResult, fail, ok, skip, warn
from synapse_fedhealth.signing import decode_base64, served_key_map

KEY_MATCHES_LOCAL = "federation.key_matches_local"

FIX_OTHER_SERVER = (
    "The public address of {server_name} reaches a homeserver named "
    "{served_name}. Point the DNS records / well-known delegation / proxy "
    "upstream for {server_name} at this Synapse."
)
FIX_OTHER_KEY = (
    "The public address serves signing key(s) {served_ids}, but this Synapse "
    "signs with {local_ids}: it reaches another or an older Synapse (a stale "
    "container, a second instance, a restored backup with another "
    "`signing_key_path`). Point the proxy's upstream at this Synapse, or stop "
    "the other one. Every process (main and workers) must load the same "
    "signing key file."
)
FIX_EXTRA_KEY = (
    "The public address also serves key(s) {extra_ids} that this Synapse does "
    "not hold: some process behind the proxy loads another signing key file. "
    "Give every process the same `signing_key_path`; retire old keys with "
    "`old_signing_keys`."
)


def judge_key_matches_local(
    served: object,
    *,
    server_name: str,
    signing_keys: Sequence[SigningKeyInfo],
    request: Mapping[str, Any],
    target: str | None = None,
) -> CheckResult:
    """Compare the key response served at one target (JSON bytes or the parsed
    object; None when the fetch failed) with our own keys. Never raises."""
    details = request_details(request)
    local_ids = [k.key_id for k in signing_keys]
    details["local_key_ids"] = local_ids
    if not signing_keys:
        return skip(
            KEY_MATCHES_LOCAL,
            "skipped: this Synapse has no signing key loaded (see config.signing_key)",
            details=details,
            target=target,
        )
    usable = _usable_response(served)
    if isinstance(usable, str):
        return skip(KEY_MATCHES_LOCAL, usable, details=details, target=target)
    served = usable
    served_name = served.get("server_name")
    current = served_key_map(served.get("verify_keys"))
    old = served_key_map(served.get("old_verify_keys"))
    served_ids = sorted(current)
    details["served_server_name"] = (
        served_name if isinstance(served_name, str) else None
    )
    details["served_key_ids"] = served_ids
    served_ids_text = ", ".join(served_ids) or "(none)"
    local_ids_text = ", ".join(local_ids)

    if served_name != server_name:
        shown = repr(served_name) if isinstance(served_name, str) else "(no name)"
        details["reason"] = "other_server"
        return fail(
            KEY_MATCHES_LOCAL,
            f"the public address serves the keys of {shown} ({served_ids_text}), "
            f"not of {server_name} ({local_ids_text})",
            fix=FIX_OTHER_SERVER.format(server_name=server_name, served_name=shown),
            details=details,
            target=target,
        )

    problems = _key_problems(signing_keys, current, old)
    if problems:
        details["reason"] = "other_key"
        return fail(
            KEY_MATCHES_LOCAL,
            f"the public address serves {served_ids_text}, this Synapse holds "
            f"{local_ids_text}: " + "; ".join(problems),
            fix=FIX_OTHER_KEY.format(
                served_ids=served_ids_text, local_ids=local_ids_text
            ),
            details=details,
            target=target,
        )

    extra = sorted(set(current) - set(local_ids))
    if extra:
        details["reason"] = "extra_key"
        details["extra_key_ids"] = extra
        return warn(
            KEY_MATCHES_LOCAL,
            f"the public address serves our key {local_ids_text} and also "
            f"{', '.join(extra)}, which this Synapse does not hold",
            fix=FIX_EXTRA_KEY.format(extra_ids=", ".join(extra)),
            details=details,
            target=target,
        )
    return ok(
        KEY_MATCHES_LOCAL,
        f"the public address serves this Synapse's key {local_ids_text}",
        details=details,
        target=target,
    )


def _usable_response(served: object) -> Mapping[str, Any] | str:
    """The key response as a JSON object, or why it can't be compared."""
    if served is None:
        return "skipped: no key response from this address (see federation.keys)"
    if isinstance(served, bytes):
        obj, problem = parse_json_object(served)
        if obj is None:
            return (
                f"skipped: the key response is unusable ({problem}; see "
                "federation.keys)"
            )
        served = obj
    if not isinstance(served, Mapping):
        return "skipped: the key response is not a JSON object (see federation.keys)"
    return served


def _key_problems(
    signing_keys: Sequence[SigningKeyInfo],
    current: Mapping[str, bytes | None],
    old: Mapping[str, bytes | None],
) -> list[str]:
    """What is wrong with each of our keys in the served response."""
    problems: list[str] = []
    for key in signing_keys:
        ours = decode_base64(key.verify_key_base64)
        if key.key_id in current:
            if current[key.key_id] != ours:
                problems.append(
                    f"{key.key_id} is served with another public key than the "
                    "one this Synapse holds"
                )
        elif key.key_id in old:
            problems.append(f"{key.key_id} is served only as an old (expired) key")
        else:
            problems.append(f"{key.key_id} is not served")
    return problems
