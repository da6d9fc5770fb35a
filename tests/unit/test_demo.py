"""The demo's choices that need no process: when it builds its own world,
and how the sample config is put behind that world's nginx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import demo, demo_world

REPO = Path(__file__).resolve().parents[2]


def test_no_world_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    reason = demo_world.unavailable_reason()
    assert reason is not None and reason.startswith("not root")


def test_no_world_without_nginx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(demo_world, "nginx_available", lambda: False)
    reason = demo_world.unavailable_reason()
    assert reason is not None and "nginx-light" in reason


class _Dns:
    address = "10.213.7.5:5353"


class _World:
    host_ip = "10.213.7.5"
    network = "10.213.7.4/30"
    ca_file = Path("/tmp/world/pki/root-ca.pem")
    dns = _Dns()


def test_sample_config_behind_the_world() -> None:
    config: dict[str, Any] = yaml.safe_load(
        (REPO / "sample_homeserver.yaml").read_text()
    )
    port = config["listeners"][0]["port"]
    demo._configure_for_world(config, port, _World())  # type: ignore[arg-type]

    (listener,) = config["listeners"]
    assert listener["bind_addresses"] == ["127.0.0.1", "10.213.7.5"]
    assert listener["x_forwarded"] is True  # nginx sends X-Forwarded-*
    assert config["ip_range_whitelist"] == ["10.213.7.4/30"]
    (entry,) = config["modules"]
    module_config = entry["config"]
    assert module_config["dns_servers"] == ["10.213.7.5:5353"]
    assert module_config["tls_ca_file"] == "/tmp/world/pki/root-ca.pem"
    # The rest of the sample stays: sqlite, its names, its module options.
    assert config["database"]["name"] == "sqlite3"
    assert config["server_name"] == "fedhealth.example"
    assert module_config["notary_check"] is True
