"""The module inside a real Synapse process (SPEC 2.1-2.3, 2.5 lint, 3)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import signedjson.key
import yaml

from tests.integration.conftest import (
    SERVER_NAME,
    SUMMARY_WAIT_S,
    RunningSynapse,
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
)

pytestmark = pytest.mark.integration

ENDPOINT = "/_synapse/fedhealth"
VERDICTS = {"ok", "degraded", "broken", "disabled"}
STATUSES = {"ok", "warn", "fail", "skip"}
LINT_TIMEOUT_S = 60


def _get(
    synapse: RunningSynapse, base: str, query: str = "", token: str | None = None
) -> HttpResponse:
    ca_file = synapse.ca_file if base.startswith("https:") else None
    return http_request(f"{base}{ENDPOINT}{query}", token=token, cafile=ca_file)


def _listener_urls(synapse: RunningSynapse) -> dict[str, str]:
    return {"client": synapse.client_url, "federation-tls": synapse.federation_url}


LISTENERS = ["client", "federation-tls"]

# -- authentication, on every listener ----------------------------------------


@pytest.mark.parametrize("listener", LISTENERS)
def test_without_token_is_401_missing_token(
    synapse: RunningSynapse, listener: str
) -> None:
    response = _get(synapse, _listener_urls(synapse)[listener])
    assert response.status == 401
    assert response.json()["errcode"] == "M_MISSING_TOKEN"


@pytest.mark.parametrize("listener", LISTENERS)
def test_bad_token_is_401_unknown_token(synapse: RunningSynapse, listener: str) -> None:
    response = _get(
        synapse, _listener_urls(synapse)[listener], token="syt_not_a_real_token"
    )
    assert response.status == 401
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"


@pytest.mark.parametrize("listener", LISTENERS)
def test_non_admin_is_403_forbidden(synapse: RunningSynapse, listener: str) -> None:
    response = _get(
        synapse, _listener_urls(synapse)[listener], token=synapse.user_token
    )
    assert response.status == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


@pytest.mark.parametrize("listener", LISTENERS)
def test_admin_gets_the_report(synapse: RunningSynapse, listener: str) -> None:
    response = _get(
        synapse, _listener_urls(synapse)[listener], token=synapse.admin_token
    )
    assert response.status == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["server_name"] == SERVER_NAME


def test_access_token_query_parameter_is_accepted(synapse: RunningSynapse) -> None:
    response = _get(synapse, synapse.client_url, f"?access_token={synapse.admin_token}")
    assert response.status == 200, response.text


# -- the report ---------------------------------------------------------------


def _report(synapse: RunningSynapse, query: str = "") -> dict[str, Any]:
    response = _get(synapse, synapse.client_url, query, token=synapse.admin_token)
    assert response.status == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def test_report_shape(synapse: RunningSynapse) -> None:
    report = _report(synapse)
    assert report["server_name"] == SERVER_NAME
    assert report["verdict"] in VERDICTS
    assert isinstance(report["federation_ok"], bool)
    assert report["federation_ok"] == (report["verdict"] in ("ok", "degraded"))
    assert isinstance(report["generated_at"], int)
    # Milliseconds since the epoch, and recent.
    assert abs(report["generated_at"] - time.time() * 1000) < 10 * 60 * 1000
    assert isinstance(report["duration_ms"], int | float)
    assert report["duration_ms"] >= 0
    assert isinstance(report["vantage"], str) and report["vantage"]
    assert isinstance(report["checks"], list) and report["checks"]
    for check in report["checks"]:
        assert isinstance(check["id"], str) and "." in check["id"], check
        assert check["status"] in STATUSES, check
        assert isinstance(check["summary"], str) and check["summary"], check
        assert isinstance(check["docs"], str) and check["docs"], check
    ids = {check["id"] for check in report["checks"]}
    assert {"config.federation_listener", "config.x_forwarded"} <= ids
    assert isinstance(report["federation_tester"], dict)
    assert "FederationOK" in report["federation_tester"]


def test_verdict_follows_the_statuses(synapse: RunningSynapse) -> None:
    report = _report(synapse)
    statuses = {check["status"] for check in report["checks"]}
    if report["verdict"] != "disabled":
        expected = (
            "broken"
            if "fail" in statuses
            else "degraded"
            if "warn" in statuses
            else "ok"
        )
        assert report["verdict"] == expected


def test_format_text(synapse: RunningSynapse) -> None:
    report = _report(synapse)
    response = _get(
        synapse, synapse.client_url, "?format=text", token=synapse.admin_token
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    for check in report["checks"]:
        assert check["id"] in response.text
    assert max(len(line) for line in response.text.splitlines()) <= 80


def test_refresh_makes_a_new_report(synapse: RunningSynapse) -> None:
    first = _report(synapse)
    cached = _report(synapse)
    assert cached["generated_at"] == first["generated_at"]  # cache_ttl is 60 s
    time.sleep(0.01)
    fresh = _report(synapse, "?refresh=true")
    assert fresh["generated_at"] > first["generated_at"]
    assert _report(synapse)["generated_at"] == fresh["generated_at"]


def test_bad_format_is_a_client_error(synapse: RunningSynapse) -> None:
    response = _get(
        synapse, synapse.client_url, "?format=xml", token=synapse.admin_token
    )
    assert response.status == 400


# -- logging ------------------------------------------------------------------


def test_startup_check_logs_a_summary(synapse: RunningSynapse) -> None:
    match = synapse.process.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
    assert match is not None, synapse.process.log_text()[-3000:]
    # fedhealth.test does not resolve (the DNS stub knows no names).
    assert match.group("summary").startswith("federation BROKEN: ")


def test_startup_warns_about_x_forwarded(synapse: RunningSynapse) -> None:
    lines = [
        w
        for w in synapse.process.fedhealth_warnings()
        if w.startswith("config.x_forwarded:")
    ]
    assert lines, synapse.process.fedhealth_warnings()
    assert all("; fix: " in line for line in lines)


def test_startup_warns_about_a_missing_federation_listener(
    broken_synapse: SynapseProcess,
) -> None:
    warnings = broken_synapse.fedhealth_warnings()
    by_id = {line.split(":", 1)[0]: line for line in warnings}
    assert "config.federation_listener" in by_id, warnings
    assert "config.x_forwarded" in by_id, warnings
    for check_id in ("config.federation_listener", "config.x_forwarded"):
        assert "; fix: " in by_id[check_id]


def test_startup_summary_of_the_broken_config(broken_synapse: SynapseProcess) -> None:
    match = SUMMARY_RE.search(broken_synapse.log_text())
    assert match is not None, broken_synapse.log_text()[-3000:]
    assert match.group("summary").startswith("federation BROKEN")


def test_config_warnings_come_before_any_network_run(
    broken_synapse: SynapseProcess,
) -> None:
    log = broken_synapse.log_text()
    warning = log.find("config.federation_listener:")
    summary = SUMMARY_RE.search(log)
    assert warning != -1 and summary is not None
    assert warning < summary.start()


def test_broken_synapse_log_is_clean(broken_synapse: SynapseProcess) -> None:
    log = broken_synapse.log_text() + broken_synapse.output_text()
    assert logcontext_errors(log) == []
    assert tracebacks_from_us(log) == []


# -- a bad module config stops Synapse ---------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"timeout": "banana"}, "timeout"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
    ids=["bad-value", "unknown-key"],
)
def test_bad_module_config_stops_synapse(
    tmp_path: Path, dns_stub: NxDomainDnsServer, override: dict[str, Any], key: str
) -> None:
    config = homeserver_config(
        [client_listener(free_port())], module_config(dns_stub, **override)
    )
    result = SynapseProcess(tmp_path, config).start_expecting_failure()
    assert result.returncode != 0, result.output
    assert f"modules.<0>.config.{key}" in result.output or (
        "modules" in result.output and key in result.output
    ), result.output
    assert "Traceback" not in result.output, result.output


# -- the lint command -------------------------------------------------------


def _lint(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synapse_fedhealth", "lint", *args],
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _write_config(path: Path, config: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def test_lint_exit_0_when_nothing_fails(
    tmp_path: Path, dns_stub: NxDomainDnsServer
) -> None:
    key = signedjson.key.generate_signing_key("a_lint")
    with open(tmp_path / "signing.key", "w", encoding="utf-8") as f:
        signedjson.key.write_signing_keys(f, [key])
    config = homeserver_config(
        [client_listener(8008)],
        module_config(dns_stub),
        signing_key_path=str(tmp_path / "signing.key"),
    )
    done = _lint("-c", _write_config(tmp_path / "homeserver.yaml", config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "config.x_forwarded" in done.stdout  # a warning is printed, yet passes


def test_lint_exit_1_without_a_federation_listener(
    tmp_path: Path, dns_stub: NxDomainDnsServer
) -> None:
    config = homeserver_config(
        [client_listener(8008, ("client",))], module_config(dns_stub)
    )
    done = _lint("-c", _write_config(tmp_path / "homeserver.yaml", config))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "config.federation_listener" in done.stdout


def test_lint_of_the_sample_resolves_paths_as_synapse(tmp_path: Path) -> None:
    # sample_homeserver.yaml's paths are relative to the directory Synapse
    # starts in; lint, started there, finds the key as Synapse would.
    sample = str(REPO / "sample_homeserver.yaml")
    key = signedjson.key.generate_signing_key("a_sample")
    with open(tmp_path / "fedhealth.example.signing.key", "w", encoding="utf-8") as f:
        signedjson.key.write_signing_keys(f, [key])
    done = _lint("-c", sample, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "signing key ed25519:a_sample is loaded" in done.stdout
    # Started elsewhere, it says where it looked, and why.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _lint("-c", sample, cwd=elsewhere)
    assert done.returncode == 1, done.stdout + done.stderr
    # (Long paths wrap at 80 columns: compare without the whitespace.)
    flat = "".join(done.stdout.split())
    assert f"cannotread{elsewhere}/fedhealth.example.signing.key" in flat
    assert f"takenfromthecurrentdirectory,{elsewhere}" in flat
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


def test_lint_exit_2_for_a_missing_file(tmp_path: Path) -> None:
    done = _lint("-c", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# -- last: the shared Synapse's log after everything above ------------------


# A line of the module's logger, with the logcontext (`%(request)s`) it
# was logged from.
MODULE_LINE_RE = re.compile(
    r" - synapse_fedhealth(?:\.[\w.]+)? - \d+ - \w+ - (?P<context>[^ ]*) - (?P<message>.*)$",
    re.MULTILINE,
)


def test_synapse_log_is_clean(synapse: RunningSynapse) -> None:
    # Let the start-up run finish first, so its log lines are in.
    synapse.process.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
    log = synapse.process.log_text() + synapse.process.output_text()
    assert logcontext_errors(log) == []
    assert tracebacks_from_us(log) == []
    # Every run is a named background process: no module line comes from
    # the sentinel logcontext, and the summary names its run.
    lines = [m.groupdict() for m in MODULE_LINE_RE.finditer(log)]
    assert [ln for ln in lines if ln["context"] == "sentinel"] == []
    summaries = [ln for ln in lines if ln["message"].startswith("federation ")]
    assert summaries, log[-3000:]
    assert all(ln["context"].startswith("fedhealth_run-") for ln in summaries)


# -- the demo command (README: bash .ci/demo) ---------------------------------

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 180


def test_demo_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.demo",
            "--config",
            str(REPO / "sample_homeserver.yaml"),
            "--workdir",
            str(tmp_path / "demo-data"),
            # The fallback (a Synapse alone); tests/integration/test_demo.py
            # runs the demo with its own world.
            "--no-world",
        ],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=REPO,  # `tests.support` is imported from the repository root
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Start-up check: federation " in done.stdout
    assert "config.x_forwarded: " in done.stdout  # the sample's deliberate problem
    assert "?format=text ==" in done.stdout and '"verdict": ' in done.stdout
    assert "Traceback" not in output
