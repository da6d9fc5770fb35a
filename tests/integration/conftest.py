"""A real Synapse process with the module, shared by the integration tests.

Every address used here is on loopback: the listeners bind 127.0.0.1 on free
ports, and the module's `dns_servers` point at a local stub that answers
NXDOMAIN, so no lookup leaves the machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attr
import pytest
import trustme

from tests.support.dns_server import NxDomainDnsServer
from tests.support.synapse_process import (
    SUMMARY_RE,
    SynapseProcess,
    free_port,
    register_user,
)

SERVER_NAME = "fedhealth.test"
SHARED_SECRET = "integration-test-shared-secret"
MODULE = "synapse_fedhealth.FedHealthModule"
STARTUP_DELAY_S = 1
RUN_TIMEOUT_S = 3
# How long the start-up check may take to log its summary: the delay, the
# run's own budget, and a margin for a slow machine.
SUMMARY_WAIT_S = STARTUP_DELAY_S + RUN_TIMEOUT_S + 30

# Synapse's complaints about broken logcontext handling (synapse/logging/context.py).
LOGCONTEXT_ERROR_RE = re.compile(
    r"sentinel context|Expected logging context|did not maintain the calling logcontext"
    r"|Re-starting finished log context|was lost"
)
TRACEBACK_RE = re.compile(r"^Traceback \(most recent call last\):$", re.MULTILINE)


def module_config(dns: NxDomainDnsServer, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "startup_check": True,
        "startup_delay": f"{STARTUP_DELAY_S}s",
        "interval": 0,
        "timeout": f"{RUN_TIMEOUT_S}s",
        "cache_ttl": "60s",
        "cert_expiry_warning_days": 14,
        "dns_servers": [dns.address],
        "notary_check": True,
    }
    config.update(overrides)
    return config


def homeserver_config(
    listeners: list[dict[str, Any]],
    fedhealth: dict[str, Any] | None,
    **extra: Any,
) -> dict[str, Any]:
    """A small sqlite homeserver config; relative paths live in Synapse's directory."""
    config: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "public_baseurl": f"https://matrix.{SERVER_NAME}/",
        "report_stats": False,
        "signing_key_path": "signing.key",
        "media_store_path": "media_store",
        "registration_shared_secret": SHARED_SECRET,
        "macaroon_secret_key": "integration-test-macaroon-secret",
        "form_secret": "integration-test-form-secret",
        "trusted_key_servers": [],
        "database": {"name": "sqlite3", "args": {"database": "homeserver.db"}},
        "listeners": listeners,
    }
    if fedhealth is not None:
        config["modules"] = [{"module": MODULE, "config": fedhealth}]
    config.update(extra)
    return config


def client_listener(
    port: int, names: tuple[str, ...] = ("client", "federation")
) -> dict[str, Any]:
    return {
        "port": port,
        "type": "http",
        "bind_addresses": ["127.0.0.1"],
        "x_forwarded": False,
        "resources": [{"names": list(names), "compress": False}],
    }


def logcontext_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if LOGCONTEXT_ERROR_RE.search(line)]


def tracebacks_from_us(log: str) -> list[str]:
    """The tracebacks in `log` (each up to the next log line) that go through
    the module's code."""
    found = []
    for match in TRACEBACK_RE.finditer(log):
        end = re.compile(r"^\d{4}-\d\d-\d\d ", re.MULTILINE).search(log, match.end())
        block = log[match.start() : end.start() if end else len(log)]
        if "synapse_fedhealth" in block:
            found.append(block)
    return found


@attr.s(frozen=True, slots=True, auto_attribs=True)
class RunningSynapse:
    process: SynapseProcess
    client_url: str
    federation_url: str  # https, a federation-only listener
    ca_file: str  # the CA that signed the federation listener's certificate
    admin_token: str
    user_token: str


@pytest.fixture(scope="session")
def dns_stub() -> Iterator[NxDomainDnsServer]:
    with NxDomainDnsServer() as server:
        yield server


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def synapse(
    tmp_path_factory: pytest.TempPathFactory,
    dns_stub: NxDomainDnsServer,
    tls_ca: trustme.CA,
) -> Iterator[RunningSynapse]:
    """Synapse with the module: a plain-HTTP client listener on loopback (no
    `x_forwarded`) and a federation-only TLS listener."""
    directory: Path = tmp_path_factory.mktemp("synapse")
    cert = tls_ca.issue_cert(SERVER_NAME, "127.0.0.1")
    cert_path = directory / "tls.crt"
    key_path = directory / "tls.key"
    ca_path = directory / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    tls_ca.cert_pem.write_to_path(str(ca_path))

    client_port, federation_port = free_port(), free_port()
    federation_listener: dict[str, Any] = {
        "port": federation_port,
        "type": "http",
        "tls": True,
        "bind_addresses": ["127.0.0.1"],
        "resources": [{"names": ["federation"], "compress": False}],
    }
    config = homeserver_config(
        [client_listener(client_port, ("client",)), federation_listener],
        module_config(dns_stub, tls_ca_file=str(ca_path)),
        tls_certificate_path=str(cert_path),
        tls_private_key_path=str(key_path),
    )
    with SynapseProcess(directory, config) as process:
        admin = register_user(
            process.base_url, SHARED_SECRET, "admin", "admin-password", True
        )
        user = register_user(
            process.base_url, SHARED_SECRET, "user", "user-password", False
        )
        # Let the start-up run finish, so that no test races it for the cache.
        process.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
        yield RunningSynapse(
            process=process,
            client_url=process.base_url,
            federation_url=f"https://127.0.0.1:{federation_port}",
            ca_file=str(ca_path),
            admin_token=admin,
            user_token=user,
        )


@pytest.fixture(scope="module")
def broken_synapse(
    tmp_path_factory: pytest.TempPathFactory, dns_stub: NxDomainDnsServer
) -> Iterator[SynapseProcess]:
    """Synapse whose only listener is a loopback client listener without
    `x_forwarded` and without the `federation` resource."""
    directory = tmp_path_factory.mktemp("broken-synapse")
    config = homeserver_config(
        [client_listener(free_port(), ("client",))],
        module_config(dns_stub, startup_delay=0),
    )
    with SynapseProcess(directory, config) as process:
        # Stopped after its start-up check, so the tests read a finished log.
        process.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
        yield process
