from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from synapse.module_api.errors import ConfigError

from synapse_fedhealth import FedHealthModule
from synapse_fedhealth.config import (
    FedHealthConfig,
    FedHealthConfigError,
    parse_dns_server,
    parse_duration_ms,
    parse_fedhealth_config,
)


def test_defaults() -> None:
    assert parse_fedhealth_config(None) == FedHealthConfig()
    assert parse_fedhealth_config({}) == FedHealthConfig()
    defaults = FedHealthConfig()
    assert defaults.startup_delay_ms == 5000
    assert defaults.interval_ms == 3_600_000
    assert defaults.timeout_ms == 10_000
    assert defaults.cache_ttl_ms == 60_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("10s", 10_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        (1500, 1500),
        ("1500", 1500),
        ("1.5s", 1500),
    ],
)
def test_durations_take_synapse_forms(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms


def test_full_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    config = parse_fedhealth_config(
        {
            "startup_check": False,
            "startup_delay": "1s",
            "interval": 0,
            "timeout": "3s",
            "cache_ttl": "0s",
            "cert_expiry_warning_days": 30,
            "tls_ca_file": str(ca),
            "dns_servers": ["127.0.0.1", "127.0.0.1:5353", "[::1]:53"],
            "notary_check": False,
        }
    )
    assert config.interval_ms == 0
    assert config.timeout_s == 3.0
    assert config.dns_servers == ("127.0.0.1", "127.0.0.1:5353", "[::1]:53")
    assert parse_dns_server("[::1]:5300") == ("::1", 5300)


# Each bad config names the key that is wrong. At least 20 (SPEC 2.1).
INVALID_CONFIGS: list[tuple[Any, str]] = [
    ({"tiemout": "10s"}, "tiemout"),
    ({"timeout": "banana"}, "timeout"),
    ({"timeout": "1ms"}, "timeout"),
    ({"timeout": "1h"}, "timeout"),
    ({"timeout": True}, "timeout"),
    ({"timeout": -5}, "timeout"),
    ({"timeout": [10]}, "timeout"),
    ({"interval": "1s"}, "interval"),
    ({"interval": "10x"}, "interval"),
    ({"interval": "30s", "timeout": "60s"}, "interval"),
    ({"startup_delay": "2d"}, "startup_delay"),
    ({"startup_delay": None}, "startup_delay"),
    ({"cache_ttl": "2d"}, "cache_ttl"),
    ({"startup_check": "yes"}, "startup_check"),
    ({"notary_check": 1}, "notary_check"),
    ({"cert_expiry_warning_days": -1}, "cert_expiry_warning_days"),
    ({"cert_expiry_warning_days": "14"}, "cert_expiry_warning_days"),
    ({"cert_expiry_warning_days": 1000}, "cert_expiry_warning_days"),
    ({"cert_expiry_warning_days": 1.5}, "cert_expiry_warning_days"),
    ({"tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file"),
    ({"tls_ca_file": 5}, "tls_ca_file"),
    ({"dns_servers": "1.1.1.1"}, "dns_servers"),
    ({"dns_servers": ["resolver.example"]}, "dns_servers"),
    ({"dns_servers": ["127.0.0.1:99999"]}, "dns_servers"),
    ({"dns_servers": [53]}, "dns_servers"),
    (["timeout"], "config"),
    # Over-long or overflowing durations: float("1" * 400) is infinity.
    ({"timeout": "1" * 400}, "timeout"),
    ({"interval": "1" * 300 + "y"}, "interval"),
    ({"cache_ttl": "1" * 400 + ".5s"}, "cache_ttl"),
    ({"startup_delay": "0." + "1" * 400}, "startup_delay"),
]


@pytest.mark.parametrize(("raw", "key"), INVALID_CONFIGS)
def test_invalid_config_names_the_key(raw: Any, key: str) -> None:
    with pytest.raises(FedHealthConfigError) as excinfo:
        parse_fedhealth_config(raw)
    assert excinfo.value.key == key
    assert excinfo.value.message


@pytest.mark.parametrize(("raw", "key"), INVALID_CONFIGS)
def test_module_raises_synapse_config_error(raw: Any, key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        FedHealthModule.parse_config(raw)
    assert tuple(excinfo.value.path or ()) == (key,)


def test_huge_integer_duration_names_the_key() -> None:
    # An int of 5,000 digits cannot be turned into text (Python's 4,300-digit
    # limit), so the error message must not print it. YAML can't carry it
    # either, which is why it is not in INVALID_CONFIGS.
    with pytest.raises(FedHealthConfigError) as excinfo:
        parse_fedhealth_config({"timeout": 10**5000})
    assert excinfo.value.key == "timeout"
    with pytest.raises(ConfigError) as config_excinfo:
        FedHealthModule.parse_config({"timeout": 10**5000})
    assert tuple(config_excinfo.value.path or ()) == ("timeout",)


def test_ca_file_without_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "notacert.pem"
    bad.write_text("hello")
    with pytest.raises(FedHealthConfigError) as excinfo:
        parse_fedhealth_config({"tls_ca_file": str(bad)})
    assert excinfo.value.key == "tls_ca_file"
