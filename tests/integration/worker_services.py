"""PostgreSQL, Redis and generic workers for the worker tests
(test_workers.py, test_worker_deployment.py).

Synapse's workers need a database that several processes share (PostgreSQL:
Synapse supports SQLite in monolith mode only) and Redis for replication
(`generic_worker` always connects to it). Both run here as plain child
processes on loopback, started and stopped by a fixture; nothing is installed
or started as a system service. Debian packages: postgresql (already on the
python machines) and redis-server; Python: matrix-synapse[postgres,redis]
(psycopg2, txredisapi, hiredis).
"""

from __future__ import annotations

import ctypes  # noqa: F401  (loaded before die_with_parent runs as `postgres`)
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attr
import pytest
import yaml

from tests.support.synapse_process import SynapseProcess, free_port
from tests.support.synapse_process import die_with_parent as _die_with_parent

SERVICE_START_TIMEOUT_S = 30.0
SERVICE_STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
POLL_S = 0.1


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


def pg_bin(name: str) -> str | None:
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
    initdb, server, createdb = (pg_bin(n) for n in ("initdb", "postgres", "createdb"))
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


def python_deps_missing() -> list[str]:
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
