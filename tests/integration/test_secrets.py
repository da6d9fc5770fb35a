"""Access control and secrets, in a real Synapse (SPEC 2.2).

- The endpoint takes no target from the caller: query parameters and path
  suffixes naming another server are ignored (or refused), and never probed:
  the module's only DNS server, a loopback stub that logs every query, never
  sees the name.
- Tokens, the config's secrets and the signing key never appear in the
  report (JSON or text) nor in Synapse's log.
- 401/403 on the federation-only TLS listener as on the client listener.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attr
import pytest
import trustme

from synapse_fedhealth.echo import secret_from_signing_key
from tests.integration.conftest import (
    SERVER_NAME,
    SHARED_SECRET,
    SUMMARY_WAIT_S,
    client_listener,
    homeserver_config,
    module_config,
)
from tests.integration.netlab.dns_server import DnsServer
from tests.support.synapse_process import (
    SUMMARY_RE,
    HttpResponse,
    SynapseProcess,
    free_port,
    http_request,
    register_user,
)

pytestmark = pytest.mark.integration

ENDPOINT = "/_synapse/fedhealth"
EVIL = "evil.example"
EVIL_IP = "127.66.66.66"
# Kept apart from conftest's values so that a leak is this test's to find.
MACAROON_SECRET = "secrets-test-macaroon-secret-9f2c"
FORM_SECRET = "secrets-test-form-secret-71ab"
ADMIN_PASSWORD = "secrets-test-admin-password-x1"
USER_PASSWORD = "secrets-test-user-password-y2"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Guarded:
    process: SynapseProcess
    dns: DnsServer
    client_url: str
    federation_url: str  # https, federation resource only
    ca_file: str
    admin_token: str
    user_token: str


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, tls_ca: trustme.CA
) -> Iterator[Guarded]:
    directory: Path = tmp_path_factory.mktemp("secrets")
    cert = tls_ca.issue_cert(SERVER_NAME, "127.0.0.1")
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
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
    # The stub knows the evil name, so a probe of it would get somewhere.
    with DnsServer(zone={EVIL: {"A": [EVIL_IP]}}) as dns:
        config = homeserver_config(
            [client_listener(client_port, ("client",)), federation_listener],
            module_config(
                dns,  # type: ignore[arg-type]  # only .address is used
                startup_delay=0,
                tls_ca_file=str(ca_path),
            ),
            tls_certificate_path=str(cert_path),
            tls_private_key_path=str(key_path),
            macaroon_secret_key=MACAROON_SECRET,
            form_secret=FORM_SECRET,
        )
        with SynapseProcess(directory, config) as process:
            admin = register_user(
                process.base_url, SHARED_SECRET, "admin", ADMIN_PASSWORD, True
            )
            user = register_user(
                process.base_url, SHARED_SECRET, "user", USER_PASSWORD, False
            )
            process.wait_for_log(SUMMARY_RE, SUMMARY_WAIT_S)
            yield Guarded(
                process=process,
                dns=dns,
                client_url=process.base_url,
                federation_url=f"https://127.0.0.1:{federation_port}",
                ca_file=str(ca_path),
                admin_token=admin,
                user_token=user,
            )


def _get(
    guarded: Guarded, base: str, suffix: str = "", token: str | None = None
) -> HttpResponse:
    ca_file = guarded.ca_file if base.startswith("https:") else None
    return http_request(f"{base}{ENDPOINT}{suffix}", token=token, cafile=ca_file)


# -- no caller-chosen target --------------------------------------------------

TARGET_ATTEMPTS = [
    f"?server_name={EVIL}&refresh=true",
    f"?target={EVIL}&refresh=true",
    f"?host={EVIL}&refresh=true",
    f"?server={EVIL}&destination={EVIL}&refresh=true",
    f"?refresh=true&server_name={EVIL_IP}:8448",
    f"/{EVIL}?refresh=true",
    f"/{EVIL}/keys?refresh=true",
    f"/check/{EVIL}?refresh=true",
]


@pytest.mark.parametrize("suffix", TARGET_ATTEMPTS)
def test_a_caller_chosen_target_is_never_probed(guarded: Guarded, suffix: str) -> None:
    guarded.dns.clear_queries()
    response = _get(guarded, guarded.client_url, suffix, token=guarded.admin_token)
    assert response.status in (200, 400, 404), response.text
    if response.status == 200:
        # Ignored: the report is about this server only.
        report = response.json()
        assert report["server_name"] == SERVER_NAME
        assert EVIL not in response.text and EVIL_IP not in response.text
        # It was a real run, through the stub ...
        assert guarded.dns.queries_for(f"_matrix-fed._tcp.{SERVER_NAME}"), (
            guarded.dns.queries
        )
    # ... that never asked for the caller's name.
    asked = [q.name for q in guarded.dns.queries]
    assert not [name for name in asked if EVIL in name], asked


@pytest.mark.parametrize("suffix", TARGET_ATTEMPTS[:2])
def test_a_target_without_admin_rights_runs_nothing(
    guarded: Guarded, suffix: str
) -> None:
    guarded.dns.clear_queries()
    for base in (guarded.client_url, guarded.federation_url):
        assert _get(guarded, base, suffix).status == 401
        assert _get(guarded, base, suffix, token=guarded.user_token).status == 403
    assert guarded.dns.queries == []


# -- 401/403 on the federation-only TLS listener --------------------------------


def test_federation_listener_without_token_is_401(guarded: Guarded) -> None:
    response = _get(guarded, guarded.federation_url)
    assert response.status == 401, response.text
    assert response.json()["errcode"] == "M_MISSING_TOKEN"


def test_federation_listener_bad_token_is_401(guarded: Guarded) -> None:
    response = _get(guarded, guarded.federation_url, token="syt_forged_token")
    assert response.status == 401, response.text
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"
    query = _get(guarded, guarded.federation_url, "?access_token=syt_forged_token")
    assert query.status == 401, query.text


def test_federation_listener_non_admin_is_403(guarded: Guarded) -> None:
    response = _get(guarded, guarded.federation_url, token=guarded.user_token)
    assert response.status == 403, response.text
    assert response.json()["errcode"] == "M_FORBIDDEN"
    query = _get(guarded, guarded.federation_url, f"?access_token={guarded.user_token}")
    assert query.status == 403, query.text


def test_federation_listener_admin_is_200(guarded: Guarded) -> None:
    response = _get(guarded, guarded.federation_url, token=guarded.admin_token)
    assert response.status == 200, response.text
    assert response.json()["server_name"] == SERVER_NAME


# -- secrets ------------------------------------------------------------------


def _signing_key_forms(guarded: Guarded) -> list[str]:
    """The private key as the key file holds it (unpadded base64 of the seed),
    padded and hex, and the nonce secret the module derives from it."""
    line = (guarded.process.directory / "signing.key").read_text().split()
    assert line[0] == "ed25519" and len(line) == 3, line
    seed_b64 = line[2]
    seed = base64.b64decode(seed_b64 + "=" * (-len(seed_b64) % 4))
    nonce_secret = secret_from_signing_key(seed)
    return [
        seed_b64,
        base64.b64encode(seed).decode(),
        base64.urlsafe_b64encode(seed).decode().rstrip("="),
        seed.hex(),
        nonce_secret.hex(),
        base64.b64encode(nonce_secret).decode().rstrip("="),
        base64.urlsafe_b64encode(nonce_secret).decode().rstrip("="),
    ]


def _secrets(guarded: Guarded) -> dict[str, str]:
    found = {
        "admin access token": guarded.admin_token,
        "user access token": guarded.user_token,
        "registration shared secret": SHARED_SECRET,
        "macaroon secret": MACAROON_SECRET,
        "form secret": FORM_SECRET,
        "admin password": ADMIN_PASSWORD,
        "user password": USER_PASSWORD,
    }
    for i, form in enumerate(_signing_key_forms(guarded)):
        found[f"signing key form {i}"] = form
    return found


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value and value in text]


def test_no_secret_in_the_report(guarded: Guarded) -> None:
    secrets = _secrets(guarded)
    for suffix in (
        "?refresh=true",
        "",
        "?format=text",
        "?format=text&refresh=true",
        "?format=html",
        "?format=html&refresh=true",
    ):
        for base in (guarded.client_url, guarded.federation_url):
            response = _get(guarded, base, suffix, token=guarded.admin_token)
            assert response.status == 200, response.text
            assert _leaks(response.text, secrets) == [], (base, suffix)
            assert _leaks(repr(response.headers), secrets) == [], (base, suffix)
    # The token in the query string (SPEC 2.2 allows it) is not echoed either.
    for query in ("", "&format=html"):
        response = _get(
            guarded, guarded.client_url, f"?access_token={guarded.admin_token}{query}"
        )
        assert response.status == 200
        assert _leaks(response.text, secrets) == []


def test_no_secret_in_error_answers(guarded: Guarded) -> None:
    secrets = _secrets(guarded)
    answers = [
        _get(guarded, guarded.client_url, token=guarded.user_token),
        _get(guarded, guarded.federation_url, token=guarded.user_token),
        _get(guarded, guarded.client_url, "?format=xml", token=guarded.admin_token),
        _get(guarded, guarded.client_url, "?refresh=maybe", token=guarded.admin_token),
    ]
    for response in answers:
        assert response.status in (400, 403), response.text
        assert _leaks(response.text, secrets) == [], response.text


def test_no_secret_in_synapse_log(guarded: Guarded) -> None:
    # After every test above (module scope, file order): the log has seen
    # start-up, runs, tokens in headers and in query strings.
    _get(guarded, guarded.client_url, "?refresh=true", token=guarded.admin_token)
    log = guarded.process.log_text() + guarded.process.output_text()
    assert "synapse_fedhealth" in log  # the module's DEBUG lines are in it
    leaks = _leaks(log, _secrets(guarded))
    assert leaks == [], [
        line
        for line in log.splitlines()
        if any(_secrets(guarded)[name] in line for name in leaks)
    ][:5]


def test_the_secrets_are_there_to_be_found(guarded: Guarded) -> None:
    # Sanity: the secrets do sit in the config and key files, so the checks
    # above would have found a leak of them.
    config = (guarded.process.directory / "homeserver.yaml").read_text()
    assert MACAROON_SECRET in config and SHARED_SECRET in config
    key = (guarded.process.directory / "signing.key").read_text()
    assert _signing_key_forms(guarded)[0] in key
    assert os.path.getsize(guarded.process.log_path) > 0
