"""What the log says about reports: problems at start-up, then transitions.

Pure logic over reports; the module facade decides when runs happen.
"""

from __future__ import annotations

import logging

from synapse_fedhealth.render.text import problem_line, summary_line
from synapse_fedhealth.report import CheckResult, Report, Status

logger = logging.getLogger("synapse_fedhealth")

CONFIG_PREFIX = "config."


def log_config_problems(checks: list[CheckResult]) -> None:
    """Start-up: one WARNING per config problem, before any network traffic."""
    for check in checks:
        if check.status in (Status.WARN, Status.FAIL):
            logger.warning("%s", problem_line(check))


class TransitionLogger:
    """Logs the first report in full, then only what changed.

    A check that gets worse is logged at WARNING, a recovery at INFO (SPEC
    2.3). Results are matched by (check id, target), so a dead IPv6 address
    is tracked apart from a working IPv4 one.
    """

    def __init__(self, *, config_already_logged: bool = True) -> None:
        self._previous: dict[tuple[str, str | None], CheckResult] | None = None
        self._previous_verdict: str | None = None
        self._config_already_logged = config_already_logged

    def observe(self, report: Report) -> None:
        current: dict[tuple[str, str | None], CheckResult] = {}
        for check in report.checks:
            # Keep the worst result per key (several results may share one).
            key = check.key
            if (
                key not in current
                or check.status.severity > current[key].status.severity
            ):
                current[key] = check
        if self._previous is None:
            self._log_first(report)
        else:
            self._log_transitions(self._previous, current)
            if report.verdict.value != self._previous_verdict:
                level = logging.INFO if report.federation_ok else logging.WARNING
                logger.log(level, "%s", summary_line(report))
        self._previous = current
        self._previous_verdict = report.verdict.value

    def _log_first(self, report: Report) -> None:
        for check in report.problems():
            if self._config_already_logged and check.id.startswith(CONFIG_PREFIX):
                continue
            logger.warning("%s", problem_line(check))
        level = logging.INFO if report.federation_ok else logging.WARNING
        logger.log(level, "%s", summary_line(report))

    @staticmethod
    def _log_transitions(
        previous: dict[tuple[str, str | None], CheckResult],
        current: dict[tuple[str, str | None], CheckResult],
    ) -> None:
        for key, check in current.items():
            before = previous.get(key)
            before_severity = before.status.severity if before else 0
            if check.status.severity > before_severity:
                was = before.status.value if before else "absent"
                logger.warning("%s (was %s)", problem_line(check), was)
            elif before is not None and check.status.severity < before_severity:
                target = f" [{check.target}]" if check.target else ""
                logger.info(
                    "%s%s recovered (%s -> %s): %s",
                    check.id,
                    target,
                    before.status.value,
                    check.status.value,
                    check.summary,
                )
        for key, before in previous.items():
            if key not in current and before.status.severity > 0:
                target = f" [{key[1]}]" if key[1] else ""
                logger.info(
                    "%s%s is no longer reported (was %s)",
                    key[0],
                    target,
                    before.status.value,
                )
