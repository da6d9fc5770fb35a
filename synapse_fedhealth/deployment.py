"""One report for a whole worker deployment (SPEC 4.7), through Synapse's own
database: nothing else to deploy.

Every process writes a row of its own into `synapse_fedhealth_reports`:
- every process writes its own `config.*` results (role "config", keyed by
  its instance name);
- the process that runs the checks (the one that runs background tasks)
  also writes its whole latest report (role "checker", the row "!checker");
- a process asked for `?refresh=true` that is not the checker writes the
  time of the request (the row "!refresh"); the checker polls for it and
  runs, and the asking process waits for a report newer than its request.

The table is created on first use (`CREATE TABLE IF NOT EXISTS`, the same
SQL on SQLite and PostgreSQL; Synapse turns the `?` placeholders into what the
engine expects). Reads and writes are one small statement each.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attr
from twisted.internet import defer

from synapse_fedhealth.check_ids import NETWORK_RUN_FAMILIES, ids_of
from synapse_fedhealth.engine.deadline import Clock
from synapse_fedhealth.report import CheckResult, Report, skip

if TYPE_CHECKING:
    from synapse_fedhealth.service import FedHealthService

logger = logging.getLogger("synapse_fedhealth")

TABLE = "synapse_fedhealth_reports"
ROLE_CHECKER = "checker"
ROLE_CONFIG = "config"
ROLE_REFRESH = "refresh"
# Row keys that are not valid worker names, so no instance can clash.
CHECKER_ROW = "!checker"
REFRESH_ROW = "!refresh"
# Synapse's main process when `worker_name` is unset.
MAIN_INSTANCE = "master"

_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    instance TEXT NOT NULL PRIMARY KEY,
    role TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    payload TEXT NOT NULL
)"""
_UPSERT = (
    f"INSERT INTO {TABLE} (instance, role, updated_at, payload) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (instance) DO UPDATE SET role = excluded.role, "
    "updated_at = excluded.updated_at, payload = excluded.payload"
)
_SELECT = f"SELECT instance, role, updated_at, payload FROM {TABLE}"

# `ModuleApi.run_db_interaction(desc, func, *args)`.
RunDb = Callable[..., "defer.Deferred[Any]"]


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Row:
    instance: str
    role: str
    updated_at: int  # ms since the epoch
    payload: Any  # parsed JSON


class DeploymentStore:
    def __init__(self, run_db: RunDb) -> None:
        self._run_db = run_db
        self._created = False

    async def publish(
        self, instance: str, role: str, updated_at: int, payload: object
    ) -> None:
        text = json.dumps(payload, separators=(",", ":"))

        def write(txn: Any) -> None:
            self._ensure_table(txn)
            txn.execute(_UPSERT, (instance, role, updated_at, text))

        await self._run_db("fedhealth_publish", write)

    async def rows(self) -> list[Row]:
        def read(txn: Any) -> list[tuple[Any, ...]]:
            self._ensure_table(txn)
            txn.execute(_SELECT)
            return list(txn.fetchall())

        out = []
        for instance, role, updated_at, payload in await self._run_db(
            "fedhealth_read", read
        ):
            try:
                parsed = json.loads(payload)
            except ValueError:
                continue  # a row we can't read is as good as absent
            out.append(
                Row(
                    instance=str(instance),
                    role=str(role),
                    updated_at=int(updated_at),
                    payload=parsed,
                )
            )
        return out

    async def request_refresh(self, at_ms: int) -> None:
        await self.publish(REFRESH_ROW, ROLE_REFRESH, at_ms, {})

    def _ensure_table(self, txn: Any) -> None:
        if not self._created:
            txn.execute(_SCHEMA)
            self._created = True


def checker_payload(instance: str, report: Report) -> dict[str, Any]:
    return {"instance": instance, "report": report.to_json()}


def checker_report(rows: Sequence[Row]) -> tuple[str, Report] | None:
    """The checking process's name and latest report, if it published one."""
    for row in rows:
        if row.instance != CHECKER_ROW or not isinstance(row.payload, Mapping):
            continue
        try:
            return str(row.payload["instance"]), Report.from_json(row.payload["report"])
        except (KeyError, TypeError, ValueError) as e:
            logger.warning("synapse_fedhealth: the shared report is unreadable: %s", e)
    return None


def refresh_requested_at(rows: Sequence[Row]) -> int | None:
    for row in rows:
        if row.instance == REFRESH_ROW:
            return row.updated_at
    return None


def config_results_by_instance(
    rows: Sequence[Row],
) -> dict[str, tuple[CheckResult, ...]]:
    """The `config.*` results each other process published."""
    out: dict[str, tuple[CheckResult, ...]] = {}
    for row in rows:
        if row.role == ROLE_CONFIG and isinstance(row.payload, list):
            try:
                out[row.instance] = tuple(CheckResult.from_json(c) for c in row.payload)
            except (KeyError, TypeError, ValueError):
                continue
    return out


def attributed(instance: str, checks: Sequence[CheckResult]) -> list[CheckResult]:
    """Config results naming the process they are about (`details.instance`)."""
    return [attr.evolve(c, details={**c.details, "instance": instance}) for c in checks]


def deployment_report(
    *,
    base: Report,
    config_by_instance: Mapping[str, Sequence[CheckResult]],
    federation_disabled: bool,
    notes: Sequence[str] = (),
) -> Report:
    """`base` (the checker's report) with every process's config results,
    attributed, in place of the checker's own unattributed ones."""
    network = [c for c in base.checks if not c.id.startswith("config")]
    checks: list[CheckResult] = []
    for instance, results in sorted(config_by_instance.items()):
        checks += attributed(instance, results)
    merged = Report.build(
        server_name=base.server_name,
        checks=[*checks, *network],
        federation_disabled=federation_disabled,
        generated_at=base.generated_at,
        duration_ms=base.duration_ms,
        vantage=base.vantage,
        notes=[*base.notes, *notes],
        federation_tester=base.federation_tester,
        facts=base.facts,
    )
    if not merged.federation_tester:
        return merged
    return attr.evolve(
        merged,
        federation_tester={
            **merged.federation_tester,
            "FederationOK": merged.federation_ok,
        },
    )


# How often the checking process looks for a refresh asked on another process.
REFRESH_POLL_MS = 1000
# How often a process waiting for the checker's new report reads the table.
WAIT_POLL_S = 0.25
# On top of the run's own `timeout`: the checker's poll interval and a margin.
REFRESH_WAIT_GRACE_S = REFRESH_POLL_MS / 1000 + 2.0


class SharedReports:
    """Serves the deployment's report from any process; with no `store` (a
    homeserver without workers) just this process's own.

    `wait` makes a raw Deferred awaitable under Synapse's logcontext rules
    (`make_deferred_yieldable`); `sleep(s)` waits; `spawn(f)` runs `f()` in
    the background (a named background process)."""

    def __init__(
        self,
        service: FedHealthService,
        store: DeploymentStore | None,
        *,
        instance: str,
        clock: Clock,
        wait: Callable[[defer.Deferred[Any]], Awaitable[Any]],
        sleep: Callable[[float], Awaitable[None]],
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
        local_report: Callable[[bool], defer.Deferred[Report]] | None = None,
    ) -> None:
        self._service = service
        # This process's own (cached) report; the facade's fires in the
        # sentinel context, as `wait` wants.
        self._local_report = local_report or service.get_report
        self._store = store
        self._instance = instance
        self._clock = clock
        self._wait = wait
        self._sleep = sleep
        self._spawn = spawn
        self._refresh_seen_at: int | None = None
        # What this process last wrote as its config row, so that a request
        # writes it only when it changed.
        self._published_config: list[dict[str, Any]] | None = None
        # The last checker report read from the table, by its row's time, and
        # the last merged report with what it was made of: requests between
        # two runs then get the same Report object, whose encoded bodies the
        # endpoint keeps (render.bodies).
        self._checker_row: tuple[int, tuple[str, Report]] | None = None
        self._merged: tuple[tuple[Any, ...], Report] | None = None
        if store is not None and service.runs_network:
            service.cache.add_listener(self._on_checker_report)

    async def report(self, refresh: bool = False) -> Report:
        if self._store is None:
            local: Report = await self._wait(self._local_report(refresh))
            return local
        try:
            if self._service.runs_network:
                base: Report = await self._wait(self._local_report(refresh))
                rows = await self._store.rows()
                return self._merge(base, rows, [])
            return await self._report_from_checker(refresh)
        except Exception as e:
            # The shared table is an addition: without it, this process's own
            # report is still right about this process.
            logger.warning(
                "synapse_fedhealth: the deployment's shared report is unavailable "
                "(%s: %s); serving this process's own",
                type(e).__name__,
                e,
            )
            fallback: Report = await self._wait(self._local_report(refresh))
            return fallback

    async def publish_config(self) -> None:
        if self._store is None:
            return
        payload = [c.to_json() for c in self._service.config_checks()]
        await self._store.publish(self._instance, ROLE_CONFIG, self._now_ms(), payload)
        self._published_config = payload

    async def _publish_config_if_changed(self) -> None:
        """After a request: a database write only when this process's config
        results differ from what it last wrote (a certificate came close to
        expiry, a file changed), not one write per request."""
        if self._store is None:
            return
        payload = [c.to_json() for c in self._service.config_checks()]
        if payload != self._published_config:
            await self.publish_config()

    async def poll_refresh_requests(self) -> None:
        """On the checking process: run when another process asked."""
        if self._store is None:
            return
        requested = refresh_requested_at(await self._store.rows())
        if requested is None or requested == self._refresh_seen_at:
            return
        first = self._refresh_seen_at is None
        self._refresh_seen_at = requested
        last = self._service.cache.last_report
        if first and last is not None and last.generated_at >= requested:
            return  # a request from before we started, already answered
        await self._wait(self._local_report(True))

    # -- inside ------------------------------------------------------------------

    async def _report_from_checker(self, refresh: bool) -> Report:
        store = self._store
        assert store is not None
        asked_at = self._now_ms()
        if refresh:
            await store.request_refresh(asked_at)
        budget_s = self._service.timeout_s + REFRESH_WAIT_GRACE_S
        deadline = self._clock.seconds() + budget_s
        while True:
            rows = await store.rows()
            found = self._checker_report(rows)
            fresh = found is not None and found[1].generated_at >= asked_at
            if not refresh or fresh or self._clock.seconds() >= deadline:
                break
            await self._sleep(WAIT_POLL_S)
        own = list(self._service.config_checks())
        self._spawn(self._publish_config_if_changed)
        if found is None:
            return self._without_checker(own, rows)
        checker, base = found
        notes = [
            f"Network results from {checker}, {self._age_s(base):.0f} s old."
            + (
                ""
                if not refresh or base.generated_at >= asked_at
                else f" The refresh asked for did not arrive within {budget_s:.0f} s: "
                f"is {checker} running?"
            )
        ]
        return self._merge(base, rows, own, notes=notes)

    def _merge(
        self,
        base: Report,
        rows: Sequence[Row],
        own: Sequence[CheckResult],
        *,
        notes: Sequence[str] = (),
    ) -> Report:
        if self._service.runs_network:
            own = [c for c in base.checks if c.id.startswith("config")]
        # This process's own row is replaced by `own`.
        config_rows = tuple(
            (r.instance, r.updated_at, r.payload)
            for r in rows
            if r.role == ROLE_CONFIG and r.instance != self._instance
        )
        # Compared by value (cheap: a few config results per process), but
        # the base by identity: it is the cached report itself, or the one
        # `_checker_report` kept for an unchanged row.
        key = (config_rows, tuple(own), tuple(notes))
        if self._merged is not None:
            (last_base, last_key), merged = self._merged
            if last_base is base and last_key == key:
                return merged
        by_instance = dict(config_results_by_instance(rows))
        by_instance[self._instance] = tuple(own)
        merged = deployment_report(
            base=base,
            config_by_instance=by_instance,
            federation_disabled=self._service.federation_disabled,
            notes=notes,
        )
        self._merged = ((base, key), merged)
        return merged

    def _checker_report(self, rows: Sequence[Row]) -> tuple[str, Report] | None:
        """`checker_report`, parsed again only when the checker's row is
        newer than the one read before."""
        row = next((r for r in rows if r.instance == CHECKER_ROW), None)
        if row is None:
            return None
        if self._checker_row is not None and self._checker_row[0] == row.updated_at:
            return self._checker_row[1]
        found = checker_report([row])
        if found is not None:
            self._checker_row = (row.updated_at, found)
        return found

    def _without_checker(self, own: list[CheckResult], rows: Sequence[Row]) -> Report:
        reason = (
            "not run here: network checks run only on the process that runs "
            "background tasks, which has published no report yet (is it running?)"
        )
        base = Report.build(
            server_name=self._service.server_name,
            checks=[
                *own,
                *(skip(check_id, reason) for check_id in ids_of(*NETWORK_RUN_FAMILIES)),
            ],
            federation_disabled=self._service.federation_disabled,
            generated_at=self._now_ms(),
            duration_ms=0,
        )
        return self._merge(base, rows, own)

    def _on_checker_report(self, report: Report) -> None:
        instance, store = self._instance, self._store
        assert store is not None

        async def publish() -> None:
            await store.publish(
                CHECKER_ROW,
                ROLE_CHECKER,
                report.generated_at,
                checker_payload(instance, report),
            )
            await self.publish_config()

        self._spawn(publish)

    def _age_s(self, report: Report) -> float:
        return max(0.0, self._now_ms() - report.generated_at) / 1000

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)
