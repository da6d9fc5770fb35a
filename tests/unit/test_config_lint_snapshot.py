"""The config checks on snapshots made from a real homeserver.yaml, offline
(`snapshot_from_raw`, the `lint` command) and through Synapse's own config
parser (`snapshot_from_synapse`, the module). Both must see the same facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attr
import pytest
import trustme
import yaml
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    write_signing_keys,
)

from synapse_fedhealth.checks.config_lint import (
    CONFIG_CHECK_IDS,
    LintSettings,
    lint_config,
)
from synapse_fedhealth.homeserver import (
    HomeserverSnapshot,
    snapshot_from_raw,
    snapshot_from_synapse,
)
from synapse_fedhealth.report import Status

NOW = 1_893_456_000.0  # 2030-01-01


def write_homeserver(tmp_path: Path, **extra: Any) -> tuple[Path, dict[str, Any]]:
    with open(tmp_path / "example.com.signing.key", "w") as f:
        write_signing_keys(f, [generate_signing_key("a_test")])
    raw: dict[str, Any] = {
        "server_name": "example.com",
        "report_stats": False,
        "signing_key_path": str(tmp_path / "example.com.signing.key"),
        "media_store_path": str(tmp_path / "media"),
        "database": {"name": "sqlite3", "args": {"database": ":memory:"}},
        "macaroon_secret_key": "test-only",
        "form_secret": "test-only",
        "registration_shared_secret": "test-only",
        "listeners": [
            {
                "port": 8008,
                "type": "http",
                "bind_addresses": ["127.0.0.1"],
                "resources": [{"names": ["client", "federation"]}],
            }
        ],
    }
    raw.update(extra)
    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


def raw_snapshot(path: Path) -> HomeserverSnapshot:
    return snapshot_from_raw(yaml.safe_load(path.read_text()), [str(path)])


def synapse_snapshot(path: Path) -> HomeserverSnapshot:
    from synapse.config.homeserver import HomeServerConfig

    config = HomeServerConfig.load_config("test", ["-c", str(path)])
    return snapshot_from_synapse(config)


def test_lint_of_a_small_homeserver_yaml(tmp_path: Path) -> None:
    path, _ = write_homeserver(tmp_path)
    results = lint_config(raw_snapshot(path), LintSettings(now=NOW))
    assert {r.id for r in results} == set(CONFIG_CHECK_IDS)
    problems = {
        (r.id, r.status) for r in results if r.status in (Status.WARN, Status.FAIL)
    }
    assert problems == {
        ("config.x_forwarded", Status.WARN),  # loopback listener, no x_forwarded
        ("config.public_baseurl", Status.WARN),  # unset
    }
    by_id = {r.id: r for r in results}
    assert by_id["config.tls_listener"].status is Status.SKIP
    assert "ed25519:a_test" in by_id["config.signing_key"].summary


def test_lint_of_a_broken_homeserver_yaml(tmp_path: Path) -> None:
    path, _ = write_homeserver(
        tmp_path,
        server_name="localhost:8448",
        public_baseurl="http://localhost:8008/",
        signing_key_path=str(tmp_path / "missing.key"),
        federation_domain_whitelist=["matrix.org"],
        key_refresh_interval="10m",
        listeners=[
            {
                "port": 8008,
                "type": "http",
                "x_forwarded": True,
                "resources": [{"names": ["client"]}],
            }
        ],
    )
    results = lint_config(raw_snapshot(path), LintSettings(now=NOW))
    statuses = {(r.id, r.status) for r in results}
    assert ("config.federation_listener", Status.FAIL) in statuses
    assert ("config.signing_key", Status.FAIL) in statuses
    assert ("config.signing_key", Status.WARN) in statuses
    assert ("config.server_name", Status.WARN) in statuses
    assert ("config.federation_restrictions", Status.WARN) in statuses
    # A local server_name: a local public_baseurl host is not judged, only http.
    assert [r.status for r in results if r.id == "config.public_baseurl"] == [
        Status.WARN
    ]
    spoof = [r for r in results if r.id == "config.x_forwarded"]
    assert [r.status for r in spoof] == [Status.WARN]
    assert (
        "every interface" in spoof[0].summary
    )  # Synapse's default binds: '::', 0.0.0.0
    signing = next(
        r for r in results if r.id == "config.signing_key" and r.status is Status.FAIL
    )
    assert "missing.key" in signing.summary


def rich_config(tmp_path: Path) -> dict[str, Any]:
    ca = trustme.CA()
    leaf = ca.create_child_ca().issue_cert("example.com")
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(tmp_path / "fullchain.pem"), append=True)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    notary_key = get_verify_key(generate_signing_key("auto"))
    return {
        "public_baseurl": "https://matrix.example.com/",
        "serve_server_wellknown": True,
        "tls_certificate_path": str(tmp_path / "fullchain.pem"),
        "tls_private_key_path": str(tmp_path / "key.pem"),
        "federation_domain_whitelist": ["matrix.org", "example.net"],
        "federation_verify_certificates": False,
        "federation_custom_ca_list": [str(tmp_path / "ca.pem")],
        "federation_client_minimum_tls_version": 1.2,
        "key_refresh_interval": "2h",
        # Without certificate checks Synapse insists on pinned or insecure notaries.
        "trusted_key_servers": [
            {"server_name": "matrix.org", "accept_keys_insecurely": True},
            {
                "server_name": "notary.example",
                "verify_keys": {"ed25519:auto": encode_verify_key_base64(notary_key)},
            },
        ],
        "listeners": [
            {
                "port": 8448,
                "type": "http",
                "tls": True,
                "bind_addresses": ["0.0.0.0"],
                "resources": [{"names": ["federation"]}],
            },
            {
                "path": str(tmp_path / "synapse.sock"),
                "type": "http",
                "resources": [{"names": ["client"]}],
            },
            {
                "port": 8009,
                "type": "http",
                "tag": "admin",
                "bind_addresses": ["::1", "127.0.0.1"],
                "x_forwarded": False,
                "resources": [{"names": ["client", "health"]}],
            },
        ],
    }


# Fields where the offline reading may differ from Synapse's (none today).
KNOWN_DIFFERENCES: dict[str, str] = {}


def snapshot_fields() -> list[Any]:
    params = []
    for field in attr.fields(HomeserverSnapshot):
        marks = []
        if field.name in KNOWN_DIFFERENCES:
            marks.append(
                pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[field.name])
            )
        params.append(pytest.param(field.name, marks=marks, id=field.name))
    return params


@pytest.fixture(scope="module")
def both_snapshots(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[HomeserverSnapshot, HomeserverSnapshot]:
    tmp_path = tmp_path_factory.mktemp("hs")
    extra = rich_config(tmp_path)
    extra["public_baseurl"] = "https://matrix.example.com"  # Synapse adds the '/'
    path, _ = write_homeserver(tmp_path, **extra)
    return raw_snapshot(path), synapse_snapshot(path)


@pytest.mark.parametrize("field", snapshot_fields())
def test_raw_and_synapse_snapshots_agree(
    both_snapshots: tuple[HomeserverSnapshot, HomeserverSnapshot], field: str
) -> None:
    raw, parsed = both_snapshots
    assert getattr(raw, field) == getattr(parsed, field)


def test_raw_and_synapse_snapshots_give_the_same_findings(
    both_snapshots: tuple[HomeserverSnapshot, HomeserverSnapshot],
) -> None:
    raw, parsed = both_snapshots
    settings = LintSettings(now=NOW, tls_ca_file=None)
    # The known differences above do not change any finding.
    raw_results = [(r.id, r.status, r.summary) for r in lint_config(raw, settings)]
    parsed_results = [
        (r.id, r.status, r.summary) for r in lint_config(parsed, settings)
    ]
    assert [x[:2] for x in raw_results] == [x[:2] for x in parsed_results]


def test_rich_config_findings(tmp_path: Path) -> None:
    extra = rich_config(tmp_path)
    path, _ = write_homeserver(tmp_path, **extra)
    snapshot = synapse_snapshot(path)
    results = lint_config(
        snapshot, LintSettings(now=NOW, tls_ca_file=str(tmp_path / "ca.pem"))
    )
    found = {(r.id, r.status) for r in results}
    assert ("config.tls_listener", Status.OK) in found
    assert ("config.well_known", Status.WARN) in found  # TLS on 8448, advertises :443
    assert ("config.federation_restrictions", Status.WARN) in found  # whitelist
    outbound = [r for r in results if r.id == "config.outbound_tls"]
    assert [r.status for r in outbound] == [Status.WARN, Status.WARN]
    # The unix socket defaults to x_forwarded: true, so the admin port is not judged.
    assert [r.status for r in results if r.id == "config.x_forwarded"] == [Status.OK]
    assert [r.status for r in results if r.id == "config.signing_key"] == [Status.OK]


def _conf_and_run(tmp_path: Path) -> tuple[Path, Path]:
    """conf/ holds homeserver.yaml; Synapse (and lint) start in run/."""
    conf, run = tmp_path / "conf", tmp_path / "run"
    conf.mkdir()
    run.mkdir()
    return conf, run


def test_relative_paths_resolve_as_synapse_resolves_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Synapse opens a path written in the config relative to the directory it
    # is started in, not to the config file's folder (sample_homeserver.yaml
    # relies on it).
    conf, run = _conf_and_run(tmp_path)
    path, _ = write_homeserver(
        run,
        signing_key_path="example.com.signing.key",
        media_store_path="media",
        tls_certificate_path="tls.crt",
        tls_private_key_path="tls.key",
    )
    path = path.rename(conf / "homeserver.yaml")
    ca = trustme.CA()
    cert = ca.issue_cert("example.com")
    cert.cert_chain_pems[0].write_to_path(str(run / "tls.crt"))
    cert.private_key_pem.write_to_path(str(run / "tls.key"))
    monkeypatch.chdir(run)

    offline, inside = raw_snapshot(path), synapse_snapshot(path)
    assert offline.signing_key_error is None
    assert offline.signing_keys == inside.signing_keys
    assert offline.tls_certificate_file == inside.tls_certificate_file
    assert offline.tls_certificate_file == str(run / "tls.crt")
    assert offline.tls_private_key_file == inside.tls_private_key_file


def test_default_signing_key_is_beside_the_last_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without signing_key_path, Synapse looks in the config file's folder.
    conf, run = _conf_and_run(tmp_path)
    path, raw = write_homeserver(conf)
    del raw["signing_key_path"]
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(run)
    offline, inside = raw_snapshot(path), synapse_snapshot(path)
    assert offline.signing_key_error is None
    assert offline.signing_keys == inside.signing_keys
