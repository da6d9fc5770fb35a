"""A whole worker deployment with real parts (SPEC 4.7, 2.4 worker rule).

PostgreSQL and Redis started by the test; a main process, a generic worker
serving `federation` and one serving `client`, behind the lab's nginx, which
routes `/_matrix/federation` and `/_matrix/key` to the federation worker and
the client paths to the client worker. The lab's DNS server points the server
name at nginx and its private CA signs nginx's certificate, so the checking
process's run really goes through nginx to the federation worker.

Two variants: the main process runs the checks, or `run_background_tasks_on`
names a fourth (background) worker, which then runs them.

With FEDHEALTH_WORKER_TIMINGS=<file>, how long each deployment took to come
up and the age of the report a worker served right after a run are appended
there (JSON lines); they are printed too (`-s`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from typing import Any

import attr
import pytest

from tests.integration.conftest import (
    SERVER_NAME,
    SHARED_SECRET,
    SUMMARY_WAIT_S,
    homeserver_config,
    logcontext_errors,
    tracebacks_from_us,
)
from tests.integration.netlab.certs import Pki
from tests.integration.netlab.dns_server import DnsServer
from tests.integration.netlab.fixtures import *  # noqa: F403
from tests.integration.netlab.fixtures import require_root
from tests.integration.netlab.lab import Lab
from tests.integration.netlab.nginx import (
    ProxyVariant,
    Vhost,
    WellKnown,
    nginx_available,
    well_known_server,
)
from tests.integration.netlab.peer import clean_env
from tests.integration.worker_services import (
    COMMAND_TIMEOUT_S,
    Postgres,
    Redis,
    WorkerProcess,
    pg_bin,
    postgres,
    python_deps_missing,
    redis,
)
from tests.support.synapse_process import (
    SUMMARY_RE,
    HttpResponse,
    SynapseProcess,
    free_port,
    http_request,
    register_user,
)

__all__ = ["postgres", "redis"]  # fixtures, used by name

pytestmark = pytest.mark.integration

ENDPOINT = "/_synapse/fedhealth"
METRICS_PATH = "/_synapse/metrics"
MAIN = "master"
FEDERATION_WORKER = "federation1"
CLIENT_WORKER = "client1"
BACKGROUND_WORKER = "background1"
ENDPOINT_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 5
VERSION_PATH = "/_matrix/federation/v1/version"
# How long a newly started worker's config results may take to reach the table.
PUBLISH_WAIT_S = 10.0
TIMINGS_ENV = "FEDHEALTH_WORKER_TIMINGS"
METRIC_PREFIX = "synapse_fedhealth_"
NETWORK_NOTE_RE = re.compile(r"Network results from (\S+), (\d+) s old\.")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Process:
    instance: str
    synapse: SynapseProcess
    url: str  # its own plain-HTTP listener on loopback
    metrics_url: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class WorkerDeployment:
    variant: str
    processes: Mapping[str, Process]  # by instance name
    checker: str  # the instance that runs background tasks
    admin_token: str
    lab: Lab
    vhost: Vhost
    env: Mapping[str, str]
    up_in_s: float

    def url(self, instance: str) -> str:
        return self.processes[instance].url


def _record_timing(entry: Mapping[str, Any]) -> None:
    line = json.dumps(dict(entry), sort_keys=True)
    print(f"\nworker deployment: {line}")
    path = os.environ.get(TIMINGS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _http_listener(port: int, names: tuple[str, ...]) -> dict[str, Any]:
    # Behind nginx: trust its X-Forwarded-* headers.
    return {
        "port": port,
        "type": "http",
        "bind_addresses": ["127.0.0.1"],
        "x_forwarded": True,
        "resources": [{"names": list(names), "compress": False}],
    }


def _metrics_listener(port: int) -> dict[str, Any]:
    return {"port": port, "type": "metrics", "bind_addresses": ["127.0.0.1"]}


def _createdb(postgres: Postgres, name: str) -> None:
    createdb = pg_bin("createdb")
    assert createdb is not None
    done = subprocess.run(
        [createdb, "-h", postgres.host, "-p", str(postgres.port)]
        + ["-U", postgres.user, name],
        capture_output=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr


def _routes(federation_upstream: str, client_upstream: str) -> str:
    """nginx locations: federation and keys to the federation worker, the
    client API to the client worker (Synapse's worker docs)."""
    headers = (
        "    proxy_set_header X-Forwarded-For $remote_addr;\n"
        "    proxy_set_header X-Forwarded-Proto $scheme;\n"
        "    proxy_set_header Host $host;\n"
        "    proxy_http_version 1.1;\n"
    )
    routes = {
        "/_matrix/federation": federation_upstream,
        "/_matrix/key": federation_upstream,
        "/_matrix/client": client_upstream,
        "/_synapse/client": client_upstream,
    }
    return "".join(
        f"location {path} {{\n    proxy_pass {upstream};\n{headers}}}\n"
        for path, upstream in routes.items()
    )


@pytest.fixture(scope="module")
def worker_lab(
    tmp_path_factory: pytest.TempPathFactory, netlab_pki: Pki, netlab_dns: DnsServer
) -> Iterator[Lab]:
    require_root()
    if not nginx_available():
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    lab = Lab(tmp_path_factory.mktemp("worker-lab"), pki=netlab_pki, dns=netlab_dns)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module", params=["main_checks", "background_worker_checks"])
def deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    worker_lab: Lab,
    postgres: Postgres,
    redis: Redis,
) -> Iterator[WorkerDeployment]:
    missing = python_deps_missing()
    if missing:
        pytest.fail(
            f"workers need {', '.join(missing)}: pip install 'matrix-synapse[postgres,redis]'"
        )
    variant: str = request.param
    started = time.monotonic()
    lab = worker_lab
    database = f"synapse_{variant}"
    _createdb(postgres, database)

    ports = {
        name: (free_port(), free_port())  # (http, metrics)
        for name in (MAIN, FEDERATION_WORKER, CLIENT_WORKER, BACKGROUND_WORKER)
    }
    replication_port = free_port()
    workers: dict[str, tuple[str, ...]] = {
        FEDERATION_WORKER: ("federation",),
        CLIENT_WORKER: ("client",),
    }
    extra: dict[str, Any] = {}
    checker = MAIN
    if variant == "background_worker_checks":
        workers[BACKGROUND_WORKER] = ("client",)
        extra["run_background_tasks_on"] = BACKGROUND_WORKER
        checker = BACKGROUND_WORKER

    ip = lab.ip("worker-deployment")
    cert = lab.cert(SERVER_NAME)
    lab.with_zone({SERVER_NAME: {"A": ip}})
    vhost = Vhost(
        address=ip,
        server_names=(SERVER_NAME,),
        cert=cert,
        well_known_server=well_known_server(f"{SERVER_NAME}:443"),
        well_known_client=WellKnown(
            {"m.homeserver": {"base_url": f"https://{SERVER_NAME}/"}},
            headers={"Access-Control-Allow-Origin": "*"},
        ),
        proxy=ProxyVariant.NONE,
        extra=_routes(
            f"http://127.0.0.1:{ports[FEDERATION_WORKER][0]}",
            f"http://127.0.0.1:{ports[CLIENT_WORKER][0]}",
        ),
    )
    lab.with_nginx(vhost)
    fedhealth = lab.module_config(
        startup_check=True,
        startup_delay="1s",
        interval=0,
        timeout=f"{RUN_TIMEOUT_S}s",
        cache_ttl="60s",
        notary_check=False,
    )
    main_dir = tmp_path_factory.mktemp(f"{variant}-main")
    config = homeserver_config(
        [
            _http_listener(ports[MAIN][0], ("client",)),
            {
                "port": replication_port,
                "type": "http",
                "bind_addresses": ["127.0.0.1"],
                "resources": [{"names": ["replication"]}],
            },
            _metrics_listener(ports[MAIN][1]),
        ],
        fedhealth,
        public_baseurl=f"https://{SERVER_NAME}/",
        enable_metrics=True,
        signing_key_path=str(main_dir / "signing.key"),
        media_store_path=str(main_dir / "media_store"),
        database={
            "name": "psycopg2",
            "args": {
                "user": postgres.user,
                "database": database,
                "host": postgres.host,
                "port": postgres.port,
                "cp_min": 1,
                "cp_max": 5,
            },
        },
        redis={"enabled": True, "host": redis.host, "port": redis.port},
        instance_map={"main": {"host": "127.0.0.1", "port": replication_port}},
        **extra,
    )
    env = clean_env()

    def url(name: str, index: int) -> str:
        return f"http://127.0.0.1:{ports[name][index]}"

    with SynapseProcess(main_dir, config, base_url=url(MAIN, 0), env=env) as main:
        processes = {MAIN: Process(MAIN, main, url(MAIN, 0), url(MAIN, 1))}
        stack: list[WorkerProcess] = []
        try:
            for name, resources in workers.items():
                worker = WorkerProcess(
                    tmp_path_factory.mktemp(f"{variant}-{name}"),
                    main.config_path,
                    {
                        "worker_app": "synapse.app.generic_worker",
                        "worker_name": name,
                        "worker_listeners": [
                            _http_listener(ports[name][0], resources),
                            _metrics_listener(ports[name][1]),
                        ],
                    },
                    base_url=url(name, 0),
                    env=env,
                )
                stack.append(worker)
                worker.start()
                processes[name] = Process(name, worker, url(name, 0), url(name, 1))
            admin = register_user(
                main.base_url, SHARED_SECRET, "admin", "admin-password", True
            )
            # The checker's start-up run is in before any test reads a report.
            processes[checker].synapse.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
            up_in_s = time.monotonic() - started
            # The main's start-up run may have come before the federation
            # worker listened (nginx: 502): one run with every process up.
            response = http_request(
                f"{processes[checker].url}{ENDPOINT}?refresh=true",
                token=admin,
                timeout=ENDPOINT_TIMEOUT_S,
            )
            assert response.status == 200, response.text
            _record_timing(
                {"variant": variant, "processes": len(processes), "up_in_s": up_in_s}
            )
            yield WorkerDeployment(
                variant=variant,
                processes=processes,
                checker=checker,
                admin_token=admin,
                lab=lab,
                vhost=vhost,
                env=env,
                up_in_s=up_in_s,
            )
        finally:
            for worker in reversed(stack):
                worker.stop()


def _get(deployment: WorkerDeployment, instance: str, query: str = "") -> HttpResponse:
    return http_request(
        f"{deployment.url(instance)}{ENDPOINT}{query}",
        token=deployment.admin_token,
        timeout=ENDPOINT_TIMEOUT_S,
    )


def _report(
    deployment: WorkerDeployment, instance: str, refresh: bool = False
) -> dict[str, Any]:
    response = _get(deployment, instance, "?refresh=true" if refresh else "")
    assert response.status == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def _network(report: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (c["id"], c.get("target"), c["status"], c["summary"])
        for c in report["checks"]
        if not str(c["id"]).startswith("config.")
    ]


def _check(report: Mapping[str, Any], check_id: str) -> dict[str, Any]:
    found = [c for c in report["checks"] if c["id"] == check_id]
    assert len(found) == 1, (check_id, report["checks"])
    check: dict[str, Any] = found[0]
    return check


def _version_requests(deployment: WorkerDeployment) -> int:
    """The federation version requests nginx has seen (from anyone)."""
    return deployment.lab.nginx.access_log_text().count(f"GET {VERSION_PATH}")


def _metric_samples(deployment: WorkerDeployment, instance: str) -> list[str]:
    response = http_request(
        f"{deployment.processes[instance].metrics_url}{METRICS_PATH}", timeout=10
    )
    assert response.status == 200, response.text[:500]
    return [
        line
        for line in response.text.splitlines()
        if line.startswith(METRIC_PREFIX)  # samples, not # HELP / # TYPE
    ]


def _last_run_s(deployment: WorkerDeployment, instance: str) -> float | None:
    for line in _metric_samples(deployment, instance):
        if line.startswith(f"{METRIC_PREFIX}last_run_timestamp_seconds{{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _dns_queries(deployment: WorkerDeployment) -> int:
    """The lab DNS server's queries for the server name (from anyone)."""
    return len(deployment.lab.dns.queries_for(SERVER_NAME))


def _summaries(deployment: WorkerDeployment, instance: str) -> int:
    return len(SUMMARY_RE.findall(deployment.processes[instance].synapse.log_text()))


# -- the tests, in order: the last three change the deployment (stop the --------
# -- federation worker, add a misrouted worker, stop the checking process) ------


def test_every_process_serves_the_same_run(deployment: WorkerDeployment) -> None:
    reports = {name: _report(deployment, name) for name in deployment.processes}
    checker = reports[deployment.checker]
    version = _check(checker, "federation.version")
    # The run went through nginx to the federation worker.
    assert version["status"] == "ok", version
    assert _version_requests(deployment) > 0
    federation_log = deployment.processes[FEDERATION_WORKER].synapse.log_text()
    assert VERSION_PATH in federation_log, federation_log[-3000:]
    for name, report in reports.items():
        assert report["generated_at"] == checker["generated_at"], name
        assert _network(report) == _network(checker), name


def test_each_process_config_is_attributed(deployment: WorkerDeployment) -> None:
    expected = set(deployment.processes)
    for name in deployment.processes:
        report = _report(deployment, name)
        instances = {
            c["details"].get("instance")
            for c in report["checks"]
            if str(c["id"]).startswith("config.")
        }
        assert instances == expected, (name, report["checks"])
        ports = {i: p.url.rsplit(":", 1)[1] for i, p in deployment.processes.items()}
        for instance in deployment.processes:
            own = [
                c
                for c in report["checks"]
                if str(c["id"]).startswith("config.")
                and c["details"].get("instance") == instance
            ]
            listener = [c for c in own if c["id"] == "config.federation_listener"]
            assert len(listener) == 1, (name, instance, own)
            # A finding names its own process's listeners, never another's.
            for other, port in ports.items():
                if other != instance:
                    assert f"port {port} " not in repr(own), (name, instance, other)
        federation = [
            c
            for c in report["checks"]
            if c["id"] == "config.federation_listener"
            and c["details"].get("instance") == FEDERATION_WORKER
        ][0]
        assert federation["status"] == "ok", federation
        assert federation["details"]["listeners"] == [
            f"listeners[0] (http, port {ports[FEDERATION_WORKER]} on 127.0.0.1)"
        ], federation


def test_refresh_on_the_client_worker_is_one_run_on_the_checker(
    deployment: WorkerDeployment,
) -> None:
    """Every probe of a run goes to the lab's nginx and DNS server: a refresh
    asked on the client worker adds exactly what one run on the checker adds
    (a probing worker would double it), and the checker's last-run metric
    moves to the run served."""
    # One run's worth of probes, asked on the checker itself.
    requests, queries = _version_requests(deployment), _dns_queries(deployment)
    own = _report(deployment, deployment.checker, refresh=True)
    per_run = _version_requests(deployment) - requests
    dns_per_run = _dns_queries(deployment) - queries
    assert per_run > 0
    last_run_before = _last_run_s(deployment, deployment.checker)
    assert last_run_before is not None

    requests, queries = _version_requests(deployment), _dns_queries(deployment)
    refreshed = _report(deployment, CLIENT_WORKER, refresh=True)
    served_at_ms = time.time() * 1000
    again = _report(deployment, CLIENT_WORKER)
    age_ms = time.time() * 1000 - again["generated_at"]
    refresh_age_ms = served_at_ms - refreshed["generated_at"]

    assert refreshed["generated_at"] > own["generated_at"], refreshed.get("notes")
    assert again["generated_at"] == refreshed["generated_at"]
    assert _version_requests(deployment) - requests == per_run
    assert _dns_queries(deployment) - queries == dns_per_run
    # The worker never ran the network checks (no summary line, ever).
    assert _summaries(deployment, CLIENT_WORKER) == 0
    last_run = _last_run_s(deployment, deployment.checker)
    assert last_run is not None and last_run > last_run_before
    # The metric is the served run's end (generated_at, in seconds).
    assert abs(last_run * 1000 - refreshed["generated_at"]) < 1, (
        last_run,
        refreshed["generated_at"],
    )
    served = {
        name: _report(deployment, name)["generated_at"] for name in deployment.processes
    }
    assert set(served.values()) == {refreshed["generated_at"]}, served
    notes = " ".join(str(n) for n in again.get("notes", []))
    note = NETWORK_NOTE_RE.search(notes)
    assert note is not None and note.group(1) == deployment.checker, again.get("notes")
    _record_timing(
        {
            "variant": deployment.variant,
            "report_age_ms_after_refresh": round(refresh_age_ms),
            "report_age_ms_next_get": round(age_ms),
            "note": note.group(0),
            "version_requests_per_run": per_run,
            "dns_queries_per_run": dns_per_run,
        }
    )


def test_metrics_on_the_checking_process_only(deployment: WorkerDeployment) -> None:
    for name in deployment.processes:
        samples = _metric_samples(deployment, name)
        if name == deployment.checker:
            assert any("federation_ok" in s for s in samples), samples
            assert any("last_run_timestamp_seconds" in s for s in samples), samples
        else:
            assert samples == [], (name, samples)


def test_logs_are_clean(deployment: WorkerDeployment) -> None:
    for name, process in deployment.processes.items():
        log = process.synapse.log_text() + process.synapse.output_text()
        assert logcontext_errors(log) == [], name
        assert tracebacks_from_us(log) == [], name


def test_stopped_federation_worker_is_a_fail_everywhere(
    deployment: WorkerDeployment,
) -> None:
    deployment.processes[FEDERATION_WORKER].synapse.stop()
    refreshed = _report(deployment, CLIENT_WORKER, refresh=True)
    version = _check(refreshed, "federation.version")
    assert version["status"] == "fail", version
    assert "502" in version["summary"] and "upstream" in version["summary"], version
    for name in deployment.processes:
        if name == FEDERATION_WORKER:
            continue
        report = _report(deployment, name)
        assert report["generated_at"] == refreshed["generated_at"], name
        assert _check(report, "federation.version") == version, name


def test_worker_without_the_federation_resource_shows_up_on_the_main(
    deployment: WorkerDeployment, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The proxy sends federation to a worker whose listener lacks the
    `federation` resource: the run through nginx gets Synapse's 404, and that
    worker's own finding reaches the report the main process serves."""
    name, port = "federation2", free_port()
    worker = WorkerProcess(
        tmp_path_factory.mktemp(f"{deployment.variant}-{name}"),
        deployment.processes[MAIN].synapse.config_path,
        {
            "worker_app": "synapse.app.generic_worker",
            "worker_name": name,
            "worker_listeners": [_http_listener(port, ("client",))],
        },
        base_url=f"http://127.0.0.1:{port}",
        env=deployment.env,
    )
    with worker:
        deployment.lab.with_nginx(
            attr.evolve(
                deployment.vhost,
                extra=_routes(
                    f"http://127.0.0.1:{port}", deployment.url(CLIENT_WORKER)
                ),
            )
        )
        try:
            refreshed = _report(deployment, CLIENT_WORKER, refresh=True)
            # The new worker writes its config results once it runs (a
            # background write): wait for them to be in the main's report.
            deadline = time.monotonic() + PUBLISH_WAIT_S
            while True:
                main = _report(deployment, MAIN)
                listener = [
                    c
                    for c in main["checks"]
                    if c["id"] == "config.federation_listener"
                    and c["details"].get("instance") == name
                ]
                if listener or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            deployment.lab.with_nginx(deployment.vhost)
    version = _check(refreshed, "federation.version")
    assert version["status"] == "fail", version
    assert "HTTP 404" in version["summary"], version
    assert main["generated_at"] == refreshed["generated_at"]
    assert _check(main, "federation.version") == version
    assert len(listener) == 1, main["checks"]
    assert f"this worker ({name}) serves no federation" in listener[0]["summary"]


def test_checker_down_a_worker_serves_the_last_report(
    deployment: WorkerDeployment,
) -> None:
    """docs/workers.md, "The checking process is down"."""
    last = _report(deployment, CLIENT_WORKER)
    deployment.processes[deployment.checker].synapse.stop()
    asked = time.monotonic()
    report = _report(deployment, CLIENT_WORKER, refresh=True)
    waited_s = time.monotonic() - asked
    assert report["generated_at"] == last["generated_at"]
    assert _network(report) == _network(last)
    notes = " ".join(str(n) for n in report.get("notes", []))
    assert f"is {deployment.checker} running?" in notes, notes
    note = NETWORK_NOTE_RE.search(notes)
    assert note is not None and note.group(1) == deployment.checker, notes
    # Bounded: the run's timeout and the grace of docs/workers.md (3 s).
    assert waited_s < RUN_TIMEOUT_S + 3 + 5, waited_s
    _record_timing(
        {"variant": deployment.variant, "refresh_with_checker_down_s": waited_s}
    )
