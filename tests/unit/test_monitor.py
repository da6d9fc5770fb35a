from __future__ import annotations

import logging

import pytest

from synapse_fedhealth.monitor import TransitionLogger, log_config_problems
from synapse_fedhealth.render.text import problem_line, render_text, summary_line
from synapse_fedhealth.report import CheckResult, Report, fail, ok, warn


def _report(*checks: CheckResult) -> Report:
    return Report.build(
        server_name="example.com",
        checks=list(checks),
        federation_disabled=False,
        generated_at=1764288000000,
        duration_ms=12,
    )


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "synapse_fedhealth"
    ]


def test_config_problems_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="synapse_fedhealth")
    log_config_problems(
        [
            ok("config.server_name", "fine"),
            warn(
                "config.x_forwarded",
                "listener 0 lacks x_forwarded",
                fix="set x_forwarded: true",
            ),
            fail("config.federation_listener", "no federation", fix="add federation"),
        ]
    )
    records = _records(caplog)
    assert records == [
        (
            logging.WARNING,
            "config.x_forwarded: listener 0 lacks x_forwarded; fix: set x_forwarded: true",
        ),
        (
            logging.WARNING,
            "config.federation_listener: no federation; fix: add federation",
        ),
    ]


def test_transitions_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="synapse_fedhealth")
    monitor = TransitionLogger()
    healthy = _report(
        ok("connection.reachable", "ok", target="127.0.0.1:8448"),
        warn("config.x", "cfg", fix="f"),
    )
    broken = _report(
        fail(
            "connection.reachable",
            "refused",
            fix="open the port",
            target="127.0.0.1:8448",
        ),
        warn("config.x", "cfg", fix="f"),
    )
    monitor.observe(healthy)
    first = _records(caplog)
    # Config problems were already logged at start-up: only the summary.
    assert first == [(logging.INFO, "federation OK (degraded: config.x)")]
    caplog.clear()
    monitor.observe(healthy)
    assert _records(caplog) == []
    monitor.observe(broken)
    records = _records(caplog)
    assert records[0][0] == logging.WARNING
    assert (
        "connection.reachable [127.0.0.1:8448]: refused; fix: open the port (was ok)"
        == records[0][1]
    )
    assert records[1] == (
        logging.WARNING,
        "federation BROKEN: connection.reachable failed",
    )
    caplog.clear()
    monitor.observe(broken)
    assert _records(caplog) == []
    monitor.observe(healthy)
    records = _records(caplog)
    assert records[0][0] == logging.INFO
    assert "recovered (fail -> ok)" in records[0][1]
    assert len([r for r in records if r[0] == logging.WARNING]) == 0


def test_render_text_is_aligned_and_complete() -> None:
    report = _report(
        ok("discovery.well_known", "none; peers use SRV or port 8448"),
        fail(
            "tls.certificate",
            "certificate for matrix.example.com expired on 2026-11-01",
            fix="Renew the certificate",
            target="203.0.113.7:443",
        ),
    )
    text = render_text(report, width=100)
    assert "verdict: BROKEN" in text
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith(("ok ", "FAIL"))]
    assert len(rows) == 2
    # The summaries start in the same column.
    assert rows[0].index("none;") == rows[1].index("certificate for")
    assert "fix: Renew the certificate" in text
    assert text.rstrip().endswith("federation BROKEN: tls.certificate failed")
    assert summary_line(_report(ok("a", "b"))) == "federation OK"
    assert problem_line(report.checks[1]).startswith(
        "tls.certificate [203.0.113.7:443]: "
    )
