from __future__ import annotations

import pytest

from synapse_fedhealth.report import (
    CheckResult,
    Report,
    Status,
    Verdict,
    compute_verdict,
    docs_anchor,
    fail,
    ok,
    skip,
    warn,
)


def _checks(*statuses: Status) -> list[CheckResult]:
    return [
        CheckResult(id=f"x.c{i}", status=s, summary="s", fix="f")
        for i, s in enumerate(statuses)
    ]


@pytest.mark.parametrize(
    ("statuses", "verdict"),
    [
        ((), Verdict.OK),
        ((Status.OK, Status.SKIP), Verdict.OK),
        ((Status.OK, Status.WARN), Verdict.DEGRADED),
        ((Status.WARN, Status.FAIL, Status.OK), Verdict.BROKEN),
        ((Status.SKIP,), Verdict.OK),
    ],
)
def test_verdict_follows_worst_status(
    statuses: tuple[Status, ...], verdict: Verdict
) -> None:
    assert compute_verdict(_checks(*statuses), federation_disabled=False) is verdict


def test_disabled_wins_over_failures() -> None:
    checks = _checks(Status.FAIL)
    assert compute_verdict(checks, federation_disabled=True) is Verdict.DISABLED
    assert not Verdict.DISABLED.federation_ok


def test_federation_ok_exactly_for_ok_and_degraded() -> None:
    assert {v for v in Verdict if v.federation_ok} == {Verdict.OK, Verdict.DEGRADED}


def test_docs_anchor_matches_heading_anchor() -> None:
    assert docs_anchor("tls.certificate") == "docs/checks.md#tlscertificate"
    assert docs_anchor("config.x_forwarded") == "docs/checks.md#configx_forwarded"


def test_report_json_shape() -> None:
    report = Report.build(
        server_name="example.com",
        checks=[
            ok("a.b", "fine"),
            warn("c.d", "meh", fix="do it", target="192.0.2.1:8448"),
            fail("e.f", "bad", fix="fix it", details={"reason": "timeout"}),
            skip("g.h", "not applicable"),
        ],
        federation_disabled=False,
        generated_at=1764288000000,
        duration_ms=412,
    )
    data = report.to_json()
    assert data["verdict"] == "broken"
    assert data["federation_ok"] is False
    assert data["generated_at"] == 1764288000000
    assert data["vantage"] == "this host"
    assert [c["status"] for c in data["checks"]] == ["ok", "warn", "fail", "skip"]
    assert data["checks"][1]["target"] == "192.0.2.1:8448"
    assert "target" not in data["checks"][0]
    assert data["checks"][2]["details"] == {"reason": "timeout"}
    assert data["checks"][2]["docs"] == "docs/checks.md#ef"
    assert isinstance(data["federation_tester"], dict)


def test_problems_are_worst_first() -> None:
    report = Report.build(
        server_name="x",
        checks=[warn("a", "w", fix="f"), ok("b", "o"), fail("c", "f", fix="f")],
        federation_disabled=False,
        generated_at=0,
        duration_ms=0,
    )
    assert [c.id for c in report.problems()] == ["c", "a"]
