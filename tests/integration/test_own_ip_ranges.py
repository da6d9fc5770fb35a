"""A real Synapse whose own `ip_range_whitelist` allows its private
(loopback) federation address, and whose `trusted_key_servers` name one
notary its default `ip_range_blacklist` refuses and one it whitelists.

Everything is on loopback: Synapse's listeners on 127.0.0.1, the module's
DNS server on a free 127.x address; the refused notary's address
(127.0.0.9) has nothing listening and is never connected to.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.integration.conftest import (
    SERVER_NAME,
    SHARED_SECRET,
    SUMMARY_WAIT_S,
    client_listener,
    homeserver_config,
    module_config,
)
from tests.integration.netlab.dns_server import DnsServer, srv
from tests.support.synapse_process import (
    SUMMARY_RE,
    SynapseProcess,
    free_port,
    http_request,
    register_user,
)

pytestmark = pytest.mark.integration

BLOCKED_NOTARY = "blocked-notary.test"
ALLOWED_NOTARY = "allowed-notary.test"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory: Path = tmp_path_factory.mktemp("own-ranges")
    ca = trustme.CA()
    cert = ca.issue_cert(SERVER_NAME, f"matrix.{SERVER_NAME}", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "tls.crt"))
    cert.private_key_pem.write_to_path(str(directory / "tls.key"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client_port, federation_port = free_port(), free_port()
    zone = {
        f"_matrix-fed._tcp.{SERVER_NAME}": {
            "SRV": [srv(10, 5, federation_port, f"matrix.{SERVER_NAME}")]
        },
        f"matrix.{SERVER_NAME}": {"A": ["127.0.0.1"]},
        BLOCKED_NOTARY: {"A": ["127.0.0.9"]},
        ALLOWED_NOTARY: {"A": ["127.0.0.1"]},
    }
    with DnsServer(zone=zone) as dns:
        config = homeserver_config(
            [
                client_listener(client_port, ("client",)),
                {
                    "port": federation_port,
                    "type": "http",
                    "tls": True,
                    "bind_addresses": ["127.0.0.1"],
                    "resources": [{"names": ["federation"], "compress": False}],
                },
            ],
            module_config(
                dns,  # type: ignore[arg-type]  # only .address is used
                tls_ca_file=str(directory / "ca.pem"),
            ),
            tls_certificate_path=str(directory / "tls.crt"),
            tls_private_key_path=str(directory / "tls.key"),
            ip_range_whitelist=["127.0.0.1/32"],
            trusted_key_servers=[
                {"server_name": BLOCKED_NOTARY},
                {"server_name": ALLOWED_NOTARY},
            ],
        )
        with SynapseProcess(directory, config) as process:
            admin = register_user(
                process.base_url, SHARED_SECRET, "admin", "admin-password", True
            )
            process.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
            response = http_request(
                f"{process.base_url}/_synapse/fedhealth?refresh=true", token=admin
            )
            assert response.status == 200, response.text
            found: dict[str, Any] = response.json()
            found["_dns_queries"] = [(q.name, q.rdtype) for q in dns.queries]
            yield found


def _checks(report: dict[str, Any], check_id: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["id"] == check_id]


def test_a_whitelisted_loopback_address_is_a_declared_private_federation(
    report: dict[str, Any],
) -> None:
    (addresses,) = _checks(report, "discovery.addresses")
    assert addresses["status"] == "ok", addresses
    assert addresses["details"]["whitelisted"] == ["127.0.0.1"]
    assert "ip_range_whitelist; peers need the same entry" in addresses["summary"]
    # The self-check of the private address went on: TLS and federation.
    (handshake,) = _checks(report, "tls.handshake")
    assert handshake["status"] == "ok", handshake
    (version,) = _checks(report, "federation.version")
    assert version["status"] == "ok", version


def test_a_notary_the_blacklist_refuses_is_not_asked(report: dict[str, Any]) -> None:
    by_target = {c.get("target"): c for c in _checks(report, "federation.notary")}
    blocked = by_target[BLOCKED_NOTARY]
    assert blocked["status"] == "warn", blocked
    assert blocked["details"]["reason"] == "blocked_by_ip_range"
    assert blocked["details"]["refused"] == ["127.0.0.9"]
    assert "Synapse cannot ask this notary either; not asked" in blocked["summary"]
    allowed = by_target[ALLOWED_NOTARY]
    assert allowed["status"] != "skip", allowed
    assert allowed["details"].get("reason") != "blocked_by_ip_range", allowed
    # Both were resolved as a peer would resolve them.
    names = {name.rstrip(".") for name, _ in report["_dns_queries"]}
    assert {BLOCKED_NOTARY, ALLOWED_NOTARY} <= names
