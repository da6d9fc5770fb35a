"""A real Synapse running synapse_fedhealth behind the lab (its DNS, CA and
nginx), for the insider and monitoring tests (test_insider.py,
test_monitoring.py).

    hs = ModuleHomeserver(tmp / "hs", lab.server_name("x"), lab, public_baseurl=...)
    hs.start()
    report = hs.report()                 # GET /_synapse/fedhealth?refresh=true
    check = find_check(report, "federation.signed_request", target="127.x:443")

Every address is loopback: the listener binds 127.0.0.1, the module resolves
through the lab's DNS server and trusts the lab's CA only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.integration.netlab.lab import Lab
from tests.integration.netlab.peer import SHARED_SECRET, base_config, clean_env
from tests.support.synapse_process import (
    SynapseProcess,
    free_port,
    http_request,
    register_user,
)

MODULE = "synapse_fedhealth.FedHealthModule"
ENDPOINT = "/_synapse/fedhealth"
ENDPOINT_TIMEOUT_S = 60.0
# With this set to a file name, the tests append their observations there
# (JSON); benchmarks/insider_table.py makes benchmarks/results/insider.md.
ROWS_ENV = "FEDHEALTH_INSIDER_ROWS"


class ModuleHomeserver:
    """Synapse with the module on 127.0.0.1:`port` (plain HTTP), meant to sit
    behind the lab's nginx (`upstream`)."""

    def __init__(
        self,
        directory: Path,
        server_name: str,
        lab: Lab,
        *,
        public_baseurl: str | None = None,
        x_forwarded: bool = True,
        resources: tuple[str, ...] = ("client", "federation"),
        module: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        self.server_name = server_name
        self.port = free_port()
        config = base_config(
            server_name, self.port, x_forwarded=x_forwarded, resources=resources
        )
        if public_baseurl is not None:
            config["public_baseurl"] = public_baseurl
        module_config: dict[str, Any] = {
            "startup_check": False,
            "interval": 0,
            "timeout": "5s",
            "cache_ttl": "60s",
        }
        module_config.update(module or {})
        config["modules"] = [
            {"module": MODULE, "config": lab.module_config(**module_config)}
        ]
        config.update(extra)
        self.process = SynapseProcess(directory, config, env=clean_env())
        self.token = ""

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def start(self) -> ModuleHomeserver:
        self.process.start()
        self.token = register_user(
            self.process.base_url,
            SHARED_SECRET,
            f"admin-{secrets.token_hex(3)}",
            secrets.token_urlsafe(12),
            True,
        )
        return self

    def stop(self) -> None:
        self.process.stop()

    def key_ids(self) -> list[str]:
        """The key IDs this Synapse signs with (asked on loopback)."""
        body = http_request(f"{self.base_url}/_matrix/key/v2/server", timeout=10).json()
        return sorted(body.get("verify_keys", {}))

    def report(self) -> dict[str, Any]:
        response = http_request(
            f"{self.base_url}{ENDPOINT}?refresh=true",
            token=self.token,
            timeout=ENDPOINT_TIMEOUT_S,
        )
        assert response.status == 200, response.text
        report: dict[str, Any] = response.json()
        return report

    def metrics_text(self) -> str:
        response = http_request(f"{self.base_url}/_synapse/metrics", timeout=10)
        assert response.status == 200, response.text[:500]
        return response.text


def find_checks(
    report: Mapping[str, Any], check_id: str, target: str | None = None
) -> list[dict[str, Any]]:
    return [
        c
        for c in report.get("checks", [])
        if c.get("id") == check_id and (target is None or c.get("target") == target)
    ]


def find_check(
    report: Mapping[str, Any], check_id: str, target: str | None = None
) -> dict[str, Any]:
    found = find_checks(report, check_id, target)
    assert len(found) == 1, (
        f"expected one {check_id} (target {target}), got {found}\n{brief(report)}"
    )
    return found[0]


def brief(report: Mapping[str, Any], ids: Sequence[str] | None = None) -> str:
    """One line per check (only `ids` when given), for assertion messages."""
    lines = [f"verdict={report.get('verdict')} duration_ms={report.get('duration_ms')}"]
    for c in report.get("checks", []):
        if ids is not None and c.get("id") not in ids:
            continue
        reason = (c.get("details") or {}).get("reason")
        lines.append(
            f"  {c.get('id')} {c.get('status')} target={c.get('target')} "
            f"reason={reason}: {c.get('summary')}"
        )
    return "\n".join(lines)


_SAMPLE_RE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$",
    re.MULTILINE,
)
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` in Prometheus text format."""
    samples = []
    for m in _SAMPLE_RE.finditer(text):
        if m.group("name") != name:
            continue
        labels = dict(_LABEL_RE.findall(m.group("labels") or ""))
        samples.append((labels, float(m.group("value"))))
    return samples


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels`."""
    found = [
        v
        for got, v in metric_samples(text, name)
        if all(got.get(k) == want for k, want in labels.items())
    ]
    assert len(found) <= 1, f"{name}{labels}: several samples {found}"
    return found[0] if found else None


def append_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    """Append `rows` to the JSON list in $FEDHEALTH_INSIDER_ROWS, if set."""
    path = os.environ.get(ROWS_ENV)
    if not path or not rows:
        return
    file = Path(path)
    existing: list[Any] = []
    if file.exists():
        existing = json.loads(file.read_text(encoding="utf-8"))
    file.write_text(json.dumps(existing + list(rows), indent=2), encoding="utf-8")
