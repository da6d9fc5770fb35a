"""`federation.traffic` (SPEC 4.6, informational): what real federation
traffic through this process proves, since start-up.

Evidence comes from Synapse itself: its federation module callbacks (events
we delivered or remote servers pulled) and its
`synapse_federation_last_received_pdu_time` /
`synapse_federation_last_sent_pdu_time` gauges. It is `ok` or `skip`, never
`fail`: no traffic may only mean a quiet server. When the active checks say
inbound is broken but a real server reached us recently, the summary says
so: the view from this host is then wrong (split-horizon DNS, hairpin NAT).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr

from synapse_fedhealth.report import CheckResult, ok, skip

FEDERATION_TRAFFIC = "federation.traffic"
MAX_NAMED = 5
MAX_VALUE_CHARS = 200
# "Recently", for the cross-check with the active checks.
RECENT_MS = 60 * 60 * 1000


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class TrafficRecord:
    """Server name -> the latest time (ms) it sent us / we delivered to it."""

    received_from: Mapping[str, int] = attr.ib(factory=dict)
    delivered_to: Mapping[str, int] = attr.ib(factory=dict)
    sources: tuple[str, ...] = ()  # where the evidence came from
    since_ms: int = 0  # when this process started watching


def _latest(times: Mapping[str, int], now_ms: int) -> list[dict[str, Any]]:
    ordered = sorted(times.items(), key=lambda kv: kv[1], reverse=True)
    return [
        {"server_name": name[:MAX_VALUE_CHARS], "ts": ts, "ago_ms": max(0, now_ms - ts)}
        for name, ts in ordered[:MAX_NAMED]
    ]


def _names(entries: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{e['server_name']} ({e['ago_ms'] // 1000} s ago)" for e in entries
    )


def judge_traffic(
    record: TrafficRecord, *, now_ms: int, inbound_broken: bool
) -> CheckResult:
    received = _latest(record.received_from, now_ms)
    delivered = _latest(record.delivered_to, now_ms)
    details: dict[str, Any] = {
        "sources": list(record.sources),
        "since_ms": record.since_ms,
        "received_from_count": len(record.received_from),
        "delivered_to_count": len(record.delivered_to),
        "latest_received": received,
        "latest_delivered": delivered,
    }
    if not record.sources:
        return skip(
            FEDERATION_TRAFFIC,
            "skipped: this Synapse exposes neither federation callbacks nor its "
            "federation PDU metrics",
            details=details,
        )
    if not received and not delivered:
        return skip(
            FEDERATION_TRAFFIC,
            "skipped: no federation traffic since start-up (a quiet server, or "
            "no rooms shared with other servers)",
            details=details,
        )
    parts = []
    if received:
        parts.append(
            f"{len(record.received_from)} servers sent us events, latest "
            + _names(received)
        )
    if delivered:
        parts.append(
            f"we delivered to {len(record.delivered_to)} servers, latest "
            + _names(delivered)
        )
    summary = "; ".join(parts) + f" (from {', '.join(record.sources)})"
    recent = [e for e in received if e["ago_ms"] <= RECENT_MS]
    if inbound_broken and recent:
        details["contradicts_inbound_checks"] = True
        summary = (
            f"the inbound checks fail from this host, but {recent[0]['server_name']} "
            f"reached us {recent[0]['ago_ms'] // 1000} s ago: the view from this "
            "host may be wrong (split-horizon DNS, hairpin NAT); "
            "federation.notary is the outside view. " + summary
        )
    return ok(FEDERATION_TRAFFIC, summary, details=details)
