"""The module on a real main process and a real generic worker (SPEC 2.1, 2.2,
4.7), on PostgreSQL and Redis started by the test (worker_services.py).
The whole deployment behind nginx is test_worker_deployment.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attr
import pytest

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
from tests.integration.worker_services import (
    Postgres,
    Redis,
    WorkerProcess,
    postgres,
    python_deps_missing,
    redis,
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

__all__ = ["postgres", "redis"]  # fixtures, used by name

pytestmark = pytest.mark.integration

ENDPOINT = "/_synapse/fedhealth"
WORKER_NAME = "worker1"
BACKGROUND_REASON = "network checks run only on the instance that runs background"
# How long to watch the worker's log for a summary line it must never write.
WORKER_QUIET_S = 3.0


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


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    dns_stub: NxDomainDnsServer,
    postgres: Postgres,
    redis: Redis,
) -> Iterator[Deployment]:
    missing = python_deps_missing()
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
