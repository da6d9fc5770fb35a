"""A bug inside one check stays inside that check, in a real Synapse.

An exception raised inside a check becomes a `fail` with `details.reason:
"error"` for that check only; the rest of the report survives, Synapse keeps
serving, and its log holds no Python traceback (SPEC 2.1, 5). The bugs are
injected by tests.integration.faulty_module.FaultyModule, which Synapse loads
through `modules:` like any module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    SHARED_SECRET,
    SUMMARY_WAIT_S,
    client_listener,
    homeserver_config,
    logcontext_errors,
    module_config,
    tracebacks_from_us,
)
from tests.integration.faulty_module import (
    FAMILY_CHECK_ID,
    FAMILY_MESSAGE,
    LINT_CHECK_ID,
    LINT_MESSAGE,
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

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FAULTY_MODULE = "tests.integration.faulty_module.FaultyModule"
ENDPOINT = "/_synapse/fedhealth"
# Checks that must still be in a report whatever single check broke.
SURVIVORS = {
    "config.server_name",
    "config.federation_listener",
    "config.x_forwarded",
    "config.signing_key",
    "discovery.srv",
    "discovery.targets",
    "federation.keys",
}


class Faulty:
    def __init__(self, process: SynapseProcess, admin_token: str) -> None:
        self.process = process
        self.admin_token = admin_token

    def get(self, query: str = "") -> HttpResponse:
        return http_request(
            f"{self.process.base_url}{ENDPOINT}{query}", token=self.admin_token
        )

    def report(self, query: str = "") -> dict[str, Any]:
        response = self.get(query)
        assert response.status == 200, response.text
        report: dict[str, Any] = response.json()
        return report


def _start(
    directory: Path, dns: NxDomainDnsServer, faults: Sequence[str]
) -> SynapseProcess:
    config = homeserver_config(
        [client_listener(free_port())],
        module_config(dns, startup_delay=0, faults=list(faults)),
    )
    config["modules"][0]["module"] = FAULTY_MODULE
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    return SynapseProcess(directory, config, env=env)


def _faulty(
    tmp_path_factory: pytest.TempPathFactory,
    dns: NxDomainDnsServer,
    faults: Sequence[str],
) -> Iterator[Faulty]:
    directory = tmp_path_factory.mktemp("faulty-" + "-".join(faults))
    with _start(directory, dns, faults) as process:
        token = register_user(
            process.base_url, SHARED_SECRET, "admin", "admin-password", True
        )
        process.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
        yield Faulty(process, token)


@pytest.fixture(scope="module")
def family_fault(
    tmp_path_factory: pytest.TempPathFactory, dns_stub: NxDomainDnsServer
) -> Iterator[Faulty]:
    yield from _faulty(tmp_path_factory, dns_stub, ["family"])


@pytest.fixture(scope="module")
def lint_fault(
    tmp_path_factory: pytest.TempPathFactory, dns_stub: NxDomainDnsServer
) -> Iterator[Faulty]:
    yield from _faulty(tmp_path_factory, dns_stub, ["lint"])


def _by_id(report: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    found: dict[str, list[Mapping[str, Any]]] = {}
    for check in report["checks"]:
        found.setdefault(check["id"], []).append(check)
    return found


def _assert_contained(report: Mapping[str, Any], check_id: str, message: str) -> None:
    checks = _by_id(report)
    assert check_id in checks, sorted(checks)
    assert len(checks[check_id]) == 1, checks[check_id]
    broken = checks[check_id][0]
    assert broken["status"] == "fail", broken
    assert broken["details"].get("reason") == "error", broken
    assert message in broken["summary"], broken
    # The rest of the report survives: every other check is there, and none
    # of them carries the injected error.
    assert SURVIVORS - {check_id} <= set(checks), sorted(checks)
    for other_id, others in checks.items():
        if other_id == check_id:
            continue
        for other in others:
            assert message not in repr(other), other
    assert report["verdict"] == "broken"
    assert report["federation_ok"] is False


def _assert_log_clean(process: SynapseProcess) -> None:
    log = process.log_text() + process.output_text()
    assert "Traceback (most recent call last)" not in log, tracebacks_from_us(log)
    assert logcontext_errors(log) == []


# -- a check family whose run() raises ----------------------------------------


def test_family_error_is_a_fail_for_its_check_only(family_fault: Faulty) -> None:
    _assert_contained(family_fault.report(), FAMILY_CHECK_ID, FAMILY_MESSAGE)


def test_family_error_in_a_fresh_run(family_fault: Faulty) -> None:
    before = family_fault.report()
    report = family_fault.report("?refresh=true")
    assert report["generated_at"] > before["generated_at"]
    _assert_contained(report, FAMILY_CHECK_ID, FAMILY_MESSAGE)


def test_family_error_text_format(family_fault: Faulty) -> None:
    response = family_fault.get("?format=text")
    assert response.status == 200, response.text
    assert FAMILY_CHECK_ID in response.text
    assert "config.federation_listener" in response.text


def test_family_error_synapse_keeps_serving(family_fault: Faulty) -> None:
    health = http_request(f"{family_fault.process.base_url}/health")
    assert health.status == 200 and health.text == "OK"
    versions = http_request(f"{family_fault.process.base_url}/_matrix/client/versions")
    assert versions.status == 200
    assert family_fault.process.running


def test_family_error_is_logged_without_a_traceback(family_fault: Faulty) -> None:
    warnings = family_fault.process.fedhealth_warnings()
    assert any(FAMILY_MESSAGE in w for w in warnings), warnings
    _assert_log_clean(family_fault.process)


# -- a config check that raises -----------------------------------------------


def test_config_check_error_is_a_fail_for_its_check_only(lint_fault: Faulty) -> None:
    _assert_contained(lint_fault.report(), LINT_CHECK_ID, LINT_MESSAGE)


def test_config_check_error_synapse_keeps_serving(lint_fault: Faulty) -> None:
    # Whatever the status, the report is served and keeps the other checks.
    report = lint_fault.report()
    assert SURVIVORS - {LINT_CHECK_ID} <= set(_by_id(report)), report
    assert [c["id"] for c in report["checks"]].count(LINT_CHECK_ID) == 1
    health = http_request(f"{lint_fault.process.base_url}/health")
    assert health.status == 200 and health.text == "OK"
    assert lint_fault.process.running


def test_config_check_error_is_logged_without_a_traceback(lint_fault: Faulty) -> None:
    lint_fault.report("?refresh=true")  # one more run through the broken check
    warnings = lint_fault.process.fedhealth_warnings()
    assert any(LINT_MESSAGE in w for w in warnings), warnings
    _assert_log_clean(lint_fault.process)
