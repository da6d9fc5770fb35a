"""Prometheus metrics (SPEC 2.4), defined once at import on the default
registry, which is what Synapse serves at /_synapse/metrics."""

from __future__ import annotations

from collections.abc import Mapping

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


def record_report(
    report: Report, cert_expiry: Mapping[str, float] | None = None
) -> None:
    """Publish a report. Checks with several results export their worst."""
    name = report.server_name
    FEDERATION_OK.labels(server_name=name).set(1 if report.federation_ok else 0)
    worst: dict[str, int] = {}
    for check in report.checks:
        value = check.status.metric_value
        if value is not None:
            worst[check.id] = max(worst.get(check.id, 0), value)
    for check_id, value in worst.items():
        CHECK_STATUS.labels(server_name=name, check=check_id).set(value)
    LAST_RUN_TIMESTAMP.labels(server_name=name).set(report.generated_at / 1000)
    RUN_DURATION.labels(server_name=name).set(report.duration_ms / 1000)
    for host, expiry in (cert_expiry or {}).items():
        TLS_CERT_EXPIRY.labels(server_name=name, host=host).set(expiry)
