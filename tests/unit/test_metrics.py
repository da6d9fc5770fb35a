from __future__ import annotations

from prometheus_client import REGISTRY

from synapse_fedhealth.metrics import record_report
from synapse_fedhealth.report import Report, fail, ok, skip, warn


def _sample(name: str, **labels: str) -> float | None:
    value = REGISTRY.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_report_is_published_on_the_default_registry() -> None:
    server = "metrics-test.example"
    report = Report.build(
        server_name=server,
        checks=[
            ok("discovery.srv", "fine"),
            warn(
                "connection.reachable",
                "dead AAAA",
                fix="f",
                target="[2001:db8::1]:8448",
            ),
            ok("connection.reachable", "ok", target="192.0.2.1:8448"),
            skip("federation.notary", "off"),
        ],
        federation_disabled=False,
        generated_at=1_764_288_000_000,
        duration_ms=1500,
    )
    record_report(report, {"matrix.example": 1_800_000_000.0})
    assert _sample("synapse_fedhealth_federation_ok", server_name=server) == 1
    assert (
        _sample(
            "synapse_fedhealth_check_status", server_name=server, check="discovery.srv"
        )
        == 0
    )
    # Several results per id: the worst is exported.
    assert (
        _sample(
            "synapse_fedhealth_check_status",
            server_name=server,
            check="connection.reachable",
        )
        == 1
    )
    # skip is not a status value: not exported.
    assert (
        _sample(
            "synapse_fedhealth_check_status",
            server_name=server,
            check="federation.notary",
        )
        is None
    )
    assert (
        _sample("synapse_fedhealth_last_run_timestamp_seconds", server_name=server)
        == 1_764_288_000
    )
    assert _sample("synapse_fedhealth_run_duration_seconds", server_name=server) == 1.5
    assert (
        _sample(
            "synapse_fedhealth_tls_certificate_expiry_timestamp_seconds",
            server_name=server,
            host="matrix.example",
        )
        == 1_800_000_000
    )

    broken = Report.build(
        server_name=server,
        checks=[fail("connection.reachable", "refused", fix="f")],
        federation_disabled=False,
        generated_at=1_764_288_060_000,
        duration_ms=10,
    )
    record_report(broken)
    assert _sample("synapse_fedhealth_federation_ok", server_name=server) == 0
    assert (
        _sample(
            "synapse_fedhealth_check_status",
            server_name=server,
            check="connection.reachable",
        )
        == 2
    )
