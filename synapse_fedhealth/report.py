"""Value types for check results and reports, and the verdict rule.

A renderer never computes a verdict: the verdict is derived here, once, from
the check statuses (SPEC section 3).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attr

from synapse_fedhealth.checks.proxy_detect import report_proxy

VANTAGE_THIS_HOST = "this host"


class Status(enum.Enum):
    """The status of one check. `skip` never affects the verdict."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    @property
    def severity(self) -> int:
        """Ordering used for "worse than" comparisons (skip counts as ok)."""
        return _SEVERITY[self]

    @property
    def metric_value(self) -> int | None:
        """Value exported as `synapse_fedhealth_check_status` (None: not exported)."""
        return _METRIC_VALUE[self]


_SEVERITY = {Status.SKIP: 0, Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}
_METRIC_VALUE: dict[Status, int | None] = {
    Status.OK: 0,
    Status.WARN: 1,
    Status.FAIL: 2,
    Status.SKIP: None,
}


class Verdict(enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"
    BROKEN = "broken"
    DISABLED = "disabled"

    @property
    def federation_ok(self) -> bool:
        return self in (Verdict.OK, Verdict.DEGRADED)


def docs_anchor(check_id: str) -> str:
    """The docs link for a check id: GitHub-style anchor of its heading."""
    return "docs/checks.md#" + check_id.replace(".", "").lower()


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class CheckResult:
    """The outcome of one check, possibly for one target address."""

    id: str
    status: Status
    summary: str
    target: str | None = None
    details: Mapping[str, Any] = attr.ib(factory=dict)
    fix: str | None = None

    @property
    def docs(self) -> str:
        return docs_anchor(self.id)

    @property
    def key(self) -> tuple[str, str | None]:
        """Identity of this result across runs (used for transition logging):
        the check and what it looked at (an address, a listener, a file)."""
        subject = self.target
        if subject is None:
            for detail in ("listener", "file", "host"):
                value = self.details.get(detail)
                if isinstance(value, str):
                    subject = value
                    break
        return (self.id, subject)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CheckResult:
        """The inverse of `to_json` (for reports shared between processes)."""
        details = obj.get("details") or {}
        if not isinstance(details, Mapping):
            raise ValueError("details is not an object")
        return cls(
            id=str(obj["id"]),
            status=Status(obj["status"]),
            summary=str(obj["summary"]),
            target=None if obj.get("target") is None else str(obj["target"]),
            details=dict(details),
            fix=None if obj.get("fix") is None else str(obj["fix"]),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "summary": self.summary,
        }
        if self.target is not None:
            out["target"] = self.target
        out["details"] = dict(self.details)
        if self.fix is not None:
            out["fix"] = self.fix
        out["docs"] = self.docs
        return out


def ok(check_id: str, summary: str, **kwargs: Any) -> CheckResult:
    return CheckResult(id=check_id, status=Status.OK, summary=summary, **kwargs)


def warn(check_id: str, summary: str, *, fix: str, **kwargs: Any) -> CheckResult:
    return CheckResult(
        id=check_id, status=Status.WARN, summary=summary, fix=fix, **kwargs
    )


def fail(check_id: str, summary: str, *, fix: str, **kwargs: Any) -> CheckResult:
    return CheckResult(
        id=check_id, status=Status.FAIL, summary=summary, fix=fix, **kwargs
    )


def skip(check_id: str, summary: str, **kwargs: Any) -> CheckResult:
    return CheckResult(id=check_id, status=Status.SKIP, summary=summary, **kwargs)


def compute_verdict(
    checks: Iterable[CheckResult], *, federation_disabled: bool
) -> Verdict:
    """SPEC 3: broken if any fail, else degraded if any warn, else ok.

    `disabled` wins when federation is switched off on purpose by config.
    """
    if federation_disabled:
        return Verdict.DISABLED
    worst = max((c.status.severity for c in checks), default=0)
    if worst >= Status.FAIL.severity:
        return Verdict.BROKEN
    if worst >= Status.WARN.severity:
        return Verdict.DEGRADED
    return Verdict.OK


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class RunFacts:
    """What a run learned that outlives its report's check results."""

    # Certificate name -> the earliest notAfter (unix seconds) served for it.
    cert_expiry: Mapping[str, float] = attr.ib(factory=dict)
    # The index of our listener that the public path reached (the echo
    # request arrived there); it makes config.x_forwarded definite.
    public_listener_index: int | None = None


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Report:
    server_name: str
    verdict: Verdict
    generated_at: int  # ms since the epoch
    duration_ms: int
    checks: Sequence[CheckResult]
    vantage: str = VANTAGE_THIS_HOST
    # Extra remarks for the reader (e.g. "only what an outsider can see").
    notes: Sequence[str] = ()
    federation_tester: Mapping[str, Any] = attr.ib(factory=dict)
    # What the run learned beyond its check results (not in the JSON).
    facts: RunFacts = attr.ib(factory=lambda: RunFacts())

    @property
    def federation_ok(self) -> bool:
        return self.verdict.federation_ok

    @classmethod
    def build(
        cls,
        *,
        server_name: str,
        checks: Sequence[CheckResult],
        federation_disabled: bool,
        generated_at: int,
        duration_ms: int,
        vantage: str = VANTAGE_THIS_HOST,
        notes: Sequence[str] = (),
        federation_tester: Mapping[str, Any] | None = None,
        facts: RunFacts | None = None,
    ) -> Report:
        return cls(
            server_name=server_name,
            verdict=compute_verdict(checks, federation_disabled=federation_disabled),
            generated_at=generated_at,
            duration_ms=duration_ms,
            checks=tuple(checks),
            vantage=vantage,
            notes=tuple(notes),
            federation_tester=federation_tester or {},
            facts=facts or RunFacts(),
        )

    def problems(self) -> list[CheckResult]:
        """Checks that are warn or fail, worst first, in report order otherwise."""
        bad = [c for c in self.checks if c.status in (Status.WARN, Status.FAIL)]
        return sorted(bad, key=lambda c: -c.status.severity)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Report:
        """The inverse of `to_json` (for reports shared between processes);
        `facts` are not part of the JSON."""
        return cls(
            server_name=str(obj["server_name"]),
            verdict=Verdict(obj["verdict"]),
            generated_at=int(obj["generated_at"]),
            duration_ms=int(obj["duration_ms"]),
            checks=tuple(CheckResult.from_json(c) for c in obj["checks"]),
            vantage=str(obj.get("vantage", VANTAGE_THIS_HOST)),
            notes=tuple(str(n) for n in obj.get("notes", ())),
            federation_tester=dict(obj.get("federation_tester") or {}),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "server_name": self.server_name,
            "verdict": self.verdict.value,
            "federation_ok": self.federation_ok,
            "generated_at": self.generated_at,
            "duration_ms": self.duration_ms,
            "vantage": self.vantage,
            "checks": [c.to_json() for c in self.checks],
        }
        if self.notes:
            out["notes"] = list(self.notes)
        # The reverse proxy the public path showed (the checks that saw it
        # have `details.proxy`), or "unknown".
        out["proxy"] = report_proxy(self.checks)
        out["federation_tester"] = dict(self.federation_tester)
        return out
