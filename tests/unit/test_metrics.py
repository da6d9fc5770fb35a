from __future__ import annotations

from prometheus_client import REGISTRY

from synapse_fedhealth.metrics import record_report
from synapse_fedhealth.report import CheckResult, Report, fail, ok, skip, warn


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


def _report(server: str, *checks: CheckResult) -> Report:
    return Report.build(
        server_name=server,
        checks=checks,
        federation_disabled=False,
        generated_at=1_764_288_000_000,
        duration_ms=10,
    )


def test_series_a_newer_report_no_longer_has_are_removed() -> None:
    server = "stale-series.example"
    record_report(
        _report(
            server,
            fail("discovery.srv", "servfail", fix="f"),
            warn("tls.certificate", "expiring", fix="f"),
            ok("federation.version", "fine"),
        ),
        {"old.example": 1_800_000_000.0, "kept.example": 1_800_000_001.0},
    )
    status = "synapse_fedhealth_check_status"
    expiry = "synapse_fedhealth_tls_certificate_expiry_timestamp_seconds"
    assert _sample(status, server_name=server, check="discovery.srv") == 2

    # The next run no longer has discovery.srv, and tls.certificate is skipped.
    record_report(
        _report(
            server,
            skip("tls.certificate", "no address"),
            ok("federation.version", "fine"),
        ),
        {"kept.example": 1_800_000_002.0},
    )
    assert _sample(status, server_name=server, check="discovery.srv") is None
    assert _sample(status, server_name=server, check="tls.certificate") is None
    assert _sample(status, server_name=server, check="federation.version") == 0
    assert _sample(expiry, server_name=server, host="old.example") is None
    assert _sample(expiry, server_name=server, host="kept.example") == 1_800_000_002

    # No certificate information at all: no expiry series either.
    record_report(_report(server, ok("federation.version", "fine")))
    assert _sample(expiry, server_name=server, host="kept.example") is None


def test_a_new_server_name_removes_the_old_servers_series() -> None:
    old, new = "renamed-old.example", "renamed-new.example"
    record_report(
        _report(old, warn("discovery.srv", "odd", fix="f")), {"h.example": 1.0}
    )
    record_report(_report(new, ok("discovery.srv", "fine")), {"h.example": 2.0})
    for name in (
        "synapse_fedhealth_federation_ok",
        "synapse_fedhealth_last_run_timestamp_seconds",
        "synapse_fedhealth_run_duration_seconds",
    ):
        assert _sample(name, server_name=old) is None, name
        assert _sample(name, server_name=new) is not None, name
    assert (
        _sample(
            "synapse_fedhealth_check_status", server_name=old, check="discovery.srv"
        )
        is None
    )
    assert (
        _sample(
            "synapse_fedhealth_tls_certificate_expiry_timestamp_seconds",
            server_name=old,
            host="h.example",
        )
        is None
    )
    assert (
        _sample(
            "synapse_fedhealth_check_status", server_name=new, check="discovery.srv"
        )
        == 0
    )
