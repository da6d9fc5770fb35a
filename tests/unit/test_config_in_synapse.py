"""Every bad module config stops Synapse's own config loading with a
ConfigError naming the key, formatted as Synapse prints it at start-up
(synapse.config._base.format_config_error), without a traceback of ours.

This runs the exact path `python -m synapse.app.homeserver` takes
(HomeServerConfig.load_config -> load_module -> parse_config) in-process;
tests/integration/test_synapse_module.py also starts real processes with a
few of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from signedjson.key import generate_signing_key, write_signing_keys
from synapse.config._base import ConfigError, format_config_error
from synapse.config.homeserver import HomeServerConfig

from synapse_fedhealth.config import FedHealthConfig
from tests.unit.test_config import INVALID_CONFIGS


def _write_config(tmp_path: Path, module_config: Any) -> Path:
    key_path = tmp_path / "test.signing.key"
    with key_path.open("w") as f:
        write_signing_keys(f, [generate_signing_key("a")])
    config = {
        "server_name": "example.com",
        "report_stats": False,
        "signing_key_path": str(key_path),
        "media_store_path": str(tmp_path / "media"),
        "database": {"name": "sqlite3", "args": {"database": ":memory:"}},
        "listeners": [
            {
                "port": 8008,
                "type": "http",
                "bind_addresses": ["127.0.0.1"],
                "resources": [{"names": ["client", "federation"]}],
            }
        ],
        "trusted_key_servers": [],
        "modules": [
            {"module": "synapse_fedhealth.FedHealthModule", "config": module_config}
        ],
    }
    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("raw", "key"), INVALID_CONFIGS)
def test_bad_module_config_stops_synapse_naming_the_key(
    tmp_path: Path, raw: Any, key: str
) -> None:
    path = _write_config(tmp_path, raw)
    with pytest.raises(ConfigError) as excinfo:
        HomeServerConfig.load_config("synapse", ["-c", str(path)])
    message = "".join(format_config_error(excinfo.value))
    # What Synapse prints: "Error in configuration at 'modules.<item 0>.config.<key>'"
    expected_path = "modules.<item 0>.config" + ("" if key == "config" else f".{key}")
    assert expected_path in message, message
    assert "Traceback" not in message


def test_good_module_config_loads(tmp_path: Path) -> None:
    path = _write_config(tmp_path, {"timeout": "3s", "interval": 0})
    config = HomeServerConfig.load_config("synapse", ["-c", str(path)])
    ((module_class, parsed),) = config.modules.loaded_modules
    assert module_class.__name__ == "FedHealthModule"
    assert isinstance(parsed, FedHealthConfig)
    assert parsed.timeout_ms == 3000
