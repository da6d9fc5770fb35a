"""Prometheus metrics (SPEC 2.4), defined once at import on the default
registry, which is what Synapse serves at /_synapse/metrics."""

from __future__ import annotations

from collections.abc import Mapping

import attr
from prometheus_client import Gauge

from synapse_fedhealth.report import Report

FEDERATION_OK = Gauge(
    "synapse_fedhealth_federation_ok",
    "1 when the last run found that federation works, else 0",
    ["server_name"],
)
CHECK_STATUS = Gauge(
    "synapse_fedhealth_check_status",
    "Status of each check in the last run: 0 ok, 1 warn, 2 fail",
    ["server_name", "check"],
)
LAST_RUN_TIMESTAMP = Gauge(
    "synapse_fedhealth_last_run_timestamp_seconds",
    "When the last run finished (unix time)",
    ["server_name"],
)
RUN_DURATION = Gauge(
    "synapse_fedhealth_run_duration_seconds",
    "How long the last run took",
    ["server_name"],
)
TLS_CERT_EXPIRY = Gauge(
    "synapse_fedhealth_tls_certificate_expiry_timestamp_seconds",
    "When the certificate served for federation expires (unix time)",
    ["server_name", "host"],
)
OUTBOUND_OK = Gauge(
    "synapse_fedhealth_outbound_ok",
    "1 when outbound.reach and outbound.destinations are not fail in the last "
    "run, else 0",
    ["server_name"],
)
OUTBOUND_CHECK_IDS = ("outbound.reach", "outbound.destinations")


def outbound_ok(report: Report) -> bool | None:
    """None when the run judged neither outbound check (a worker, federation
    disabled, both skipped): then there is no series rather than a guess."""
    judged = [
        c
        for c in report.checks
        if c.id in OUTBOUND_CHECK_IDS and c.status.metric_value is not None
    ]
    if not judged:
        return None
    return not any(c.status.value == "fail" for c in judged)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PublishedSeries:
    """The label sets one report published."""

    server_name: str
    check_ids: frozenset[str]
    hosts: frozenset[str]
    outbound: bool = False


class _LastPublished:
    """What the previous `record_report` published, so that the next one can
    remove the series it no longer has: a stale series keeps its last value
    forever, and alerts would fire on it."""

    series: PublishedSeries | None = None


_last_published = _LastPublished()


def record_report(
    report: Report, cert_expiry: Mapping[str, float] | None = None
) -> None:
    """Publish a report. Checks with several results export their worst.

    Series of the previous report that this one no longer has (a check id that
    is gone or now `skip`, a certificate host, or everything of a previous
    server name) are removed.
    """
    name = report.server_name
    worst: dict[str, int] = {}
    for check in report.checks:
        value = check.status.metric_value
        if value is not None:
            worst[check.id] = max(worst.get(check.id, 0), value)
    expiry = dict(cert_expiry or {})
    outbound = outbound_ok(report)
    published = PublishedSeries(
        server_name=name,
        check_ids=frozenset(worst),
        hosts=frozenset(expiry),
        outbound=outbound is not None,
    )
    previous = _last_published.series
    if previous is not None:
        _remove_stale(previous, published)

    FEDERATION_OK.labels(server_name=name).set(1 if report.federation_ok else 0)
    for check_id, value in worst.items():
        CHECK_STATUS.labels(server_name=name, check=check_id).set(value)
    LAST_RUN_TIMESTAMP.labels(server_name=name).set(report.generated_at / 1000)
    RUN_DURATION.labels(server_name=name).set(report.duration_ms / 1000)
    for host, not_after in expiry.items():
        TLS_CERT_EXPIRY.labels(server_name=name, host=host).set(not_after)
    if outbound is not None:
        OUTBOUND_OK.labels(server_name=name).set(1 if outbound else 0)
    _last_published.series = published


def _remove_stale(previous: PublishedSeries, current: PublishedSeries) -> None:
    old = previous.server_name
    renamed = old != current.server_name
    if renamed:
        for gauge in (FEDERATION_OK, LAST_RUN_TIMESTAMP, RUN_DURATION):
            gauge.remove(old)
    if previous.outbound and (renamed or not current.outbound):
        OUTBOUND_OK.remove(old)
    for check_id in previous.check_ids:
        if renamed or check_id not in current.check_ids:
            CHECK_STATUS.remove(old, check_id)
    for host in previous.hosts:
        if renamed or host not in current.hosts:
            TLS_CERT_EXPIRY.remove(old, host)
