"""The module on a real main process and a real generic worker (SPEC 2.1, 2.2).

Synapse's workers need a database that several processes share (PostgreSQL:
Synapse supports SQLite in monolith mode only) and Redis for replication
(`generic_worker` always connects to it). Both run here as plain child
processes on loopback, started and stopped by a fixture; nothing is installed
or started as a system service. Debian packages: postgresql (already on the
python machines) and redis-server; Python: matrix-synapse[postgres,redis]
(psycopg2, txredisapi, hiredis).
"""

from __future__ import annotations

import ctypes  # noqa: F401  (loaded before _die_with_parent runs as `postgres`)
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attr
import pytest
import yaml

from tests.integration.conftest import (
    SERVER_NAME,
    SHARED_SECRET,
    SUMMARY_WAIT_S,
    client_listener,
    homeserver_config,
    logcontext_errors,
    module_config,
    tracebacks_from_us,
)
from tests.support.dns_server import NxDomainDnsServer
from tests.support.synapse_process import (
    SUMMARY_RE,
    HttpResponse,
    SynapseProcess,
    free_port,
    http_request,
    register_user,
)
from tests.support.synapse_process import die_with_parent as _die_with_parent

pytestmark = pytest.mark.integration

ENDPOINT = "/_synapse/fedhealth"
WORKER_NAME = "worker1"
SERVICE_START_TIMEOUT_S = 30.0
SERVICE_STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
POLL_S = 0.1
BACKGROUND_REASON = "network checks run only on the instance that runs background"
# How long to watch the worker's log for a summary line it must never write.
WORKER_QUIET_S = 3.0


class ServiceError(Exception):
    pass


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(SERVICE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(SERVICE_STOP_TIMEOUT_S)


def _output(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-4000:]
    except FileNotFoundError:
        return ""


# -- PostgreSQL ----------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Postgres:
    host: str
    port: int
    user: str
    database: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _RunAs:
    """PostgreSQL refuses to run as root: as root, run it as `postgres`."""

    user: str | None
    uid: int | None
    gid: int | None

    @classmethod
    def for_postgres(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls(None, None, None)
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError(
                "running as root and there is no `postgres` user to run PostgreSQL as"
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def popen_args(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    initdb, server, createdb = (_pg_bin(n) for n in ("initdb", "postgres", "createdb"))
    if not (initdb and server and createdb):
        pytest.fail(
            "PostgreSQL's initdb/postgres/createdb are not installed "
            "(Debian package postgresql)"
        )
    run_as = _RunAs.for_postgres()
    # Not under pytest's tmp_path: its parents are private to root, and the
    # server may run as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="fedhealth-pg-"))
    data = base / "data"
    log = base / "postgres.log"
    if run_as.uid is not None and run_as.gid is not None:
        os.chown(base, run_as.uid, run_as.gid)
    port = free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        done = subprocess.run(
            [initdb, "-D", str(data), "-A", "trust", "-U", "synapse"]
            + ["-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=base,
            **run_as.popen_args(),
        )
        if done.returncode != 0:
            raise ServiceError(
                f"initdb failed ({done.returncode}): {done.stdout!r} {done.stderr!r}"
            )
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [server, "-D", str(data), "-k", str(base), "-p", str(port)]
                + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
                + ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=base,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **run_as.popen_args(),
            )
        # createdb retries until the server accepts connections.
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise ServiceError(f"postgres exited: {_output(log)}")
            done = subprocess.run(
                [createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "synapse"]
                + ["synapse"],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"createdb failed: {done.stderr!r}; server log: {_output(log)}"
                )
            time.sleep(0.2)
        yield Postgres("127.0.0.1", port, "synapse", "synapse")
    finally:
        if process is not None:
            _stop(process, signal.SIGINT)  # "fast" shutdown
        shutil.rmtree(base, ignore_errors=True)


# -- Redis ---------------------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Redis:
    host: str
    port: int


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if server is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    directory = tmp_path_factory.mktemp("redis")
    log = directory / "redis.log"
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(directory)]
            + ["--daemonize", "no"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while "Ready to accept connections" not in _output(log):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"redis-server did not start: {_output(log)}")
            time.sleep(POLL_S)
        yield Redis("127.0.0.1", port)
    finally:
        _stop(process, signal.SIGTERM)


# -- Synapse: main + worker ----------------------------------------------------


class WorkerProcess(SynapseProcess):
    """`synapse.app.generic_worker` with the main's homeserver.yaml and a
    worker config of its own (in `directory`)."""

    def __init__(
        self,
        directory: Path,
        main_config_path: Path,
        worker_config: Mapping[str, Any],
        base_url: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(directory, worker_config, base_url=base_url, env=env)
        self.main_config_path = main_config_path

    @property
    def config_path(self) -> Path:
        return self.directory / "worker.yaml"

    def write_files(self) -> Path:
        path = super().write_files()
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["worker_log_config"] = config.pop("log_config")
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def generate_keys(self) -> None:
        self.write_files()  # the main process made the signing key

    def _command(self, *extra: str) -> list[str]:
        return [
            self.python,
            "-m",
            "synapse.app.generic_worker",
            "-c",
            str(self.main_config_path),
            "-c",
            str(self.config_path),
            *extra,
        ]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Deployment:
    main: SynapseProcess
    worker: WorkerProcess
    main_url: str
    worker_url: str
    main_port: int
    worker_port: int
    admin_token: str
    user_token: str


def _python_deps_missing() -> list[str]:
    missing = []
    for name in ("psycopg2", "txredisapi", "hiredis"):
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    dns_stub: NxDomainDnsServer,
    postgres: Postgres,
    redis: Redis,
) -> Iterator[Deployment]:
    missing = _python_deps_missing()
    if missing:
        pytest.fail(
            f"workers need {', '.join(missing)}: pip install 'matrix-synapse[postgres,redis]'"
        )
    main_dir = tmp_path_factory.mktemp("workers-main")
    worker_dir = tmp_path_factory.mktemp("workers-worker")
    main_port, replication_port, worker_port = free_port(), free_port(), free_port()
    replication_listener = {
        "port": replication_port,
        "type": "http",
        "bind_addresses": ["127.0.0.1"],
        "resources": [{"names": ["replication"]}],
    }
    config = homeserver_config(
        [client_listener(main_port), replication_listener],
        module_config(dns_stub),
        signing_key_path=str(main_dir / "signing.key"),
        media_store_path=str(main_dir / "media_store"),
        database={
            "name": "psycopg2",
            "args": {
                "user": postgres.user,
                "database": postgres.database,
                "host": postgres.host,
                "port": postgres.port,
                "cp_min": 1,
                "cp_max": 5,
            },
        },
        redis={"enabled": True, "host": redis.host, "port": redis.port},
        instance_map={"main": {"host": "127.0.0.1", "port": replication_port}},
    )
    worker_config = {
        "worker_app": "synapse.app.generic_worker",
        "worker_name": WORKER_NAME,
        "worker_listeners": [client_listener(worker_port)],
    }
    with SynapseProcess(main_dir, config) as main:
        worker = WorkerProcess(
            worker_dir,
            main.config_path,
            worker_config,
            base_url=f"http://127.0.0.1:{worker_port}",
        )
        with worker:
            admin = register_user(
                main.base_url, SHARED_SECRET, "admin", "admin-password", True
            )
            user = register_user(
                main.base_url, SHARED_SECRET, "user", "user-password", False
            )
            # The main's start-up run is over before the tests read logs.
            main.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
            yield Deployment(
                main=main,
                worker=worker,
                main_url=main.base_url,
                worker_url=worker.base_url,
                main_port=main_port,
                worker_port=worker_port,
                admin_token=admin,
                user_token=user,
            )


def _get(base: str, token: str | None = None, query: str = "") -> HttpResponse:
    return http_request(f"{base}{ENDPOINT}{query}", token=token)


def _checks(
    report: Mapping[str, Any], instance: str | None = None
) -> dict[str, Mapping[str, Any]]:
    """Checks by id; config checks only those about `instance`."""
    checks: Sequence[Mapping[str, Any]] = report["checks"]
    return {
        check["id"]: check
        for check in checks
        if instance is None
        or not str(check["id"]).startswith("config.")
        or check["details"].get("instance") == instance
    }


def _network(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (c["id"], c["status"], c["summary"])
        for c in report["checks"]
        if not str(c["id"]).startswith("config.")
    ]


# -- the endpoint on the worker's own listener ----------------------------------


def test_worker_without_token_is_401(deployment: Deployment) -> None:
    response = _get(deployment.worker_url)
    assert response.status == 401, response.text
    assert response.json()["errcode"] == "M_MISSING_TOKEN"


def test_worker_bad_token_is_401(deployment: Deployment) -> None:
    response = _get(deployment.worker_url, token="syt_not_a_real_token")
    assert response.status == 401, response.text
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"


def test_worker_non_admin_is_403(deployment: Deployment) -> None:
    response = _get(deployment.worker_url, token=deployment.user_token)
    assert response.status == 403, response.text
    assert response.json()["errcode"] == "M_FORBIDDEN"


def test_worker_admin_gets_a_report(deployment: Deployment) -> None:
    response = _get(deployment.worker_url, token=deployment.admin_token)
    assert response.status == 200, response.text
    assert response.json()["server_name"] == SERVER_NAME


# -- what the worker's report holds ---------------------------------------------


def _worker_report(deployment: Deployment) -> dict[str, Any]:
    response = _get(deployment.worker_url, token=deployment.admin_token)
    assert response.status == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def test_worker_lints_its_own_listeners(deployment: Deployment) -> None:
    checks = _checks(_worker_report(deployment), WORKER_NAME)
    listener = checks["config.federation_listener"]
    assert listener["status"] == "ok", listener
    labels = listener["details"]["listeners"]
    assert labels == [
        f"listeners[0] (http, port {deployment.worker_port} on 127.0.0.1)"
    ]
    # Every config entry that names a listener names the worker's, never the main's.
    config_text = repr([c for i, c in checks.items() if i.startswith("config.")])
    assert f"port {deployment.worker_port}" in config_text
    assert f"port {deployment.main_port}" not in config_text
    x_forwarded = checks["config.x_forwarded"]
    assert f"port {deployment.worker_port}" in repr(x_forwarded), x_forwarded


def test_worker_serves_the_main_processes_run(deployment: Deployment) -> None:
    """SPEC 4.7: the same run, network checks included, from either process;
    the worker never probes itself."""
    main = _get(deployment.main_url, token=deployment.admin_token).json()
    worker = _worker_report(deployment)
    assert worker["generated_at"] == main["generated_at"]
    assert _network(worker) == _network(main)
    assert _network(worker)
    assert not any(BACKGROUND_REASON in summary for _, _, summary in _network(worker))


def test_each_process_config_is_attributed(deployment: Deployment) -> None:
    for url in (deployment.main_url, deployment.worker_url):
        report = _get(url, token=deployment.admin_token).json()
        instances = {
            c["details"].get("instance")
            for c in report["checks"]
            if str(c["id"]).startswith("config.")
        }
        assert instances == {"master", WORKER_NAME}, report["checks"]
        worker_listener = _checks(report, WORKER_NAME)["config.federation_listener"]
        assert f"port {deployment.worker_port}" in repr(worker_listener)


def test_refresh_on_the_worker_runs_on_the_main(deployment: Deployment) -> None:
    before = _get(deployment.main_url, token=deployment.admin_token).json()
    refreshed = _get(
        deployment.worker_url, token=deployment.admin_token, query="?refresh=true"
    ).json()
    assert refreshed["generated_at"] > before["generated_at"], refreshed.get("notes")
    # The main serves that same run: it was the main's, not a second one.
    after = _get(deployment.main_url, token=deployment.admin_token).json()
    assert after["generated_at"] == refreshed["generated_at"]


def test_main_reports_network_results(deployment: Deployment) -> None:
    response = _get(deployment.main_url, token=deployment.admin_token)
    assert response.status == 200, response.text
    checks = response.json()["checks"]
    network = [c for c in checks if not str(c["id"]).startswith("config.")]
    assert network
    assert not any(BACKGROUND_REASON in c["summary"] for c in network), network
    labels = _checks(response.json(), "master")["config.federation_listener"]["details"]
    assert labels["listeners"] == [
        f"listeners[0] (http, port {deployment.main_port} on 127.0.0.1)"
    ]
    # Synapse's destinations table, read on PostgreSQL (SPEC 4.6).
    destinations = _checks(response.json())["outbound.destinations"]
    assert destinations["status"] == "ok", destinations
    assert "retry backoff" in destinations["summary"], destinations


# -- start-up runs and logs -----------------------------------------------------


def test_only_the_main_ran_the_startup_check(deployment: Deployment) -> None:
    assert SUMMARY_RE.search(deployment.main.log_text()), deployment.main.log_text()[
        -3000:
    ]
    # The worker's start-up delay has long passed (the main's summary is in).
    time.sleep(max(0.0, WORKER_QUIET_S))
    worker_log = deployment.worker.log_text()
    # No start-up run: nothing logged from its background process, and no
    # summary but those of runs the worker's own endpoint requests made (a
    # worker's run is config-only and ends inside the request's context).
    assert " - fedhealth_startup-" not in worker_log, worker_log[-3000:]
    summaries = [m.group(0) for m in SUMMARY_RE.finditer(worker_log)]
    assert all(re.search(r" - GET-\d+ - federation", s) for s in summaries), summaries
    # The worker really is a worker talking to the main over Redis.
    assert re.search(r"redis", worker_log, re.IGNORECASE), worker_log[-3000:]


def test_logs_are_clean(deployment: Deployment) -> None:
    for process in (deployment.main, deployment.worker):
        log = process.log_text() + process.output_text()
        assert logcontext_errors(log) == [], process.directory
        assert tracebacks_from_us(log) == [], process.directory


def test_worker_report_has_each_check_once(deployment: Deployment) -> None:
    keys = [
        (c["id"], c.get("target"), c["details"].get("instance"))
        for c in _worker_report(deployment)["checks"]
    ]
    assert sorted(keys, key=repr) == sorted(set(keys), key=repr), keys
