"""Config checks (SPEC 4.1) on hand-built snapshots: ok, warn and fail per check."""

from __future__ import annotations

import json
from typing import Any

import attr
import pytest

from synapse_fedhealth.checks.config_lint import (
    CONFIG_CHECK_IDS,
    LintSettings,
    lint_config,
)
from synapse_fedhealth.homeserver import (
    HomeserverSnapshot,
    ListenerInfo,
    SigningKeyInfo,
)
from synapse_fedhealth.report import CheckResult, Status

NOW = 1_893_456_000.0  # 2030-01-01, fixed: checks never read the clock

PROXIED_LISTENER = ListenerInfo(
    index=0,
    type="http",
    port=8008,
    bind_addresses=("127.0.0.1", "::1"),
    x_forwarded=True,
    resources=frozenset({"client", "federation"}),
)


def make_snapshot(**overrides: Any) -> HomeserverSnapshot:
    """A healthy homeserver behind a reverse proxy; override what a test breaks."""
    fields: dict[str, Any] = {
        "server_name": "example.com",
        "public_baseurl": "https://matrix.example.com/",
        "listeners": (PROXIED_LISTENER,),
        "signing_keys": (
            SigningKeyInfo(key_id="ed25519:a_abcd", verify_key_base64="x"),
        ),
    }
    fields.update(overrides)
    return HomeserverSnapshot(**fields)


def listener(index: int = 0, **overrides: Any) -> ListenerInfo:
    return attr.evolve(PROXIED_LISTENER, index=index, **overrides)


def lint(snapshot: HomeserverSnapshot, **settings: Any) -> list[CheckResult]:
    return lint_config(snapshot, LintSettings(now=NOW, **settings))


def results_for(
    check_id: str, snapshot: HomeserverSnapshot, **settings: Any
) -> list[CheckResult]:
    return [r for r in lint(snapshot, **settings) if r.id == check_id]


def statuses(
    check_id: str, snapshot: HomeserverSnapshot, **settings: Any
) -> list[Status]:
    return [r.status for r in results_for(check_id, snapshot, **settings)]


def assert_well_formed(results: list[CheckResult]) -> None:
    json.dumps([r.to_json() for r in results])  # details must be plain JSON
    for r in results:
        assert r.id in CONFIG_CHECK_IDS
        assert r.summary and "\n" not in r.summary
        if r.status in (Status.WARN, Status.FAIL):
            assert r.fix, r
        if r.status is Status.SKIP:
            assert r.summary


# --- the whole lint ---------------------------------------------------------


def test_healthy_config_gives_one_ok_or_skip_per_id() -> None:
    results = lint(make_snapshot())
    assert_well_formed(results)
    assert [r.id for r in results] == list(CONFIG_CHECK_IDS)
    by_id = {r.id: r.status for r in results}
    assert by_id.pop("config.tls_listener") is Status.SKIP  # no TLS listener
    assert set(by_id.values()) == {Status.OK}


def test_every_id_appears_even_when_everything_is_wrong() -> None:
    snapshot = make_snapshot(
        server_name="Bad_Name",
        public_baseurl=None,
        listeners=(),
        serve_server_wellknown=True,
        federation_domain_whitelist=("a.org",),
        federation_verify_certificates=False,
        signing_keys=(),
        signing_key_error="cannot read /nowhere: No such file or directory",
        key_refresh_interval_ms=60_000,
    )
    results = lint(snapshot)
    assert_well_formed(results)
    assert {r.id for r in results} == set(CONFIG_CHECK_IDS)


def test_a_crashing_check_becomes_an_error_fail_not_an_exception() -> None:
    # A listener whose bind_addresses is not a tuple of strings trips the
    # listener checks; lint_config must still return every id.
    broken = listener(bind_addresses=(None,))
    results = lint(make_snapshot(listeners=(broken,)))
    assert {r.id for r in results} == set(CONFIG_CHECK_IDS)
    crashed = [
        r
        for r in results
        if r.status is Status.FAIL and r.details.get("reason") == "error"
    ]
    assert "config.x_forwarded" in [r.id for r in crashed]
    assert all("internal error" in r.summary for r in crashed)


# --- config.server_name ----------------------------------------------------


@pytest.mark.parametrize(
    "name", ["example.com", "matrix.example.com:8448", "[2001:db8::1]:8448", "1.2.3.4"]
)
def test_server_name_ok(name: str) -> None:
    # 1.2.3.4 and 2001:db8:: are not global, so use them only for grammar:
    results = results_for("config.server_name", make_snapshot(server_name=name))
    assert Status.FAIL not in [r.status for r in results]


def test_server_name_public_is_ok() -> None:
    assert statuses(
        "config.server_name", make_snapshot(server_name="example.com:8448")
    ) == [Status.OK]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "exa_mple.com",
        "example.com.",
        "example..com",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:+80",
        "2001:db8::1",
        "[2001:db8::1",
        "[not-ipv6]",
        "[::1]x",
        "example.com\n",
        "a" * 64 + ".com",
    ],
)
def test_server_name_invalid_fails(name: str) -> None:
    results = results_for("config.server_name", make_snapshot(server_name=name))
    assert [r.status for r in results] == [Status.FAIL]
    assert "server_name" in (results[0].fix or "")


def test_server_name_too_long_fails() -> None:
    name = ".".join(["a" * 50] * 5) + ".example.com"  # 254 + 12 > 230
    results = results_for("config.server_name", make_snapshot(server_name=name))
    assert [r.status for r in results] == [Status.FAIL]
    assert "230" in results[0].summary


def test_server_name_upper_case_warns() -> None:
    results = results_for(
        "config.server_name", make_snapshot(server_name="Example.com")
    )
    assert [r.status for r in results] == [Status.WARN]
    assert "example.com" in (results[0].fix or "")


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "localhost:8448",
        "matrix.localhost",
        "synapse.local",
        "hs.internal",
        "nas.home.arpa",
        "intranet",
        "127.0.0.1",
        "10.1.2.3:8448",
        "192.168.1.10",
        "[::1]",
        "[fd00::1]:8448",
    ],
)
def test_server_name_not_public_warns(name: str) -> None:
    results = results_for("config.server_name", make_snapshot(server_name=name))
    assert [r.status for r in results] == [Status.WARN]
    assert "cannot reach" in results[0].summary


def test_server_name_upper_case_and_private_gives_two_results() -> None:
    results = results_for(
        "config.server_name", make_snapshot(server_name="Synapse.LOCAL")
    )
    assert [r.status for r in results] == [Status.WARN, Status.WARN]


# --- config.federation_listener ---------------------------------------------


def test_federation_listener_ok_names_the_listener() -> None:
    [result] = results_for("config.federation_listener", make_snapshot())
    assert result.status is Status.OK
    assert "listeners[0]" in result.summary


def test_no_federation_listener_fails() -> None:
    client_only = listener(resources=frozenset({"client"}))
    metrics = ListenerInfo(
        index=1, type="metrics", port=9000, bind_addresses=("127.0.0.1",)
    )
    [result] = results_for(
        "config.federation_listener", make_snapshot(listeners=(client_only, metrics))
    )
    assert result.status is Status.FAIL
    assert "federation" in (result.fix or "") and "resources" in (result.fix or "")


def test_keys_resource_alone_is_not_federation() -> None:
    keys_only = listener(resources=frozenset({"keys", "openid"}))
    assert statuses(
        "config.federation_listener", make_snapshot(listeners=(keys_only,))
    ) == [Status.FAIL]


def test_no_federation_listener_on_a_worker_is_ok_with_explanation() -> None:
    snapshot = make_snapshot(
        listeners=(listener(resources=frozenset({"client"})),),
        worker_name="client_reader1",
        workers_configured=True,
    )
    [result] = results_for("config.federation_listener", snapshot)
    assert result.status is Status.OK
    assert "client_reader1" in result.summary


def test_no_federation_listener_on_main_with_workers_is_ok_with_explanation() -> None:
    snapshot = make_snapshot(
        listeners=(listener(resources=frozenset({"client"})),), workers_configured=True
    )
    [result] = results_for("config.federation_listener", snapshot)
    assert result.status is Status.OK
    assert result.details["workers_configured"] is True


def test_no_federation_listener_with_federation_disabled_is_ok() -> None:
    snapshot = make_snapshot(
        listeners=(listener(resources=frozenset({"client"})),),
        federation_domain_whitelist=(),
    )
    assert statuses("config.federation_listener", snapshot) == [Status.OK]


# --- config.x_forwarded ---------------------------------------------------------


def test_local_listener_without_x_forwarded_warns_conditionally() -> None:
    snapshot = make_snapshot(listeners=(listener(x_forwarded=False),))
    [result] = results_for("config.x_forwarded", snapshot)
    assert result.status is Status.WARN
    assert result.summary.startswith("if a reverse proxy fronts listeners[0]")
    assert result.details["definite"] is False
    assert "x_forwarded: true" in (result.fix or "")
    assert "proxy_set_header X-Forwarded-For" in (result.fix or "")


@pytest.mark.parametrize(
    "where",
    [
        {"bind_addresses": ("10.0.0.5",)},
        {"bind_addresses": ("172.17.0.2",)},
        {"bind_addresses": ("100.64.0.1",)},  # CGNAT
        {"bind_addresses": ("::ffff:127.0.0.1",)},
        {"bind_addresses": (), "port": None, "unix_path": "/run/synapse.sock"},
    ],
)
def test_private_and_unix_listeners_without_x_forwarded_warn(
    where: dict[str, Any],
) -> None:
    snapshot = make_snapshot(listeners=(listener(x_forwarded=False, **where),))
    assert statuses("config.x_forwarded", snapshot) == [Status.WARN]


def test_local_listener_with_x_forwarded_is_ok() -> None:
    assert statuses("config.x_forwarded", make_snapshot()) == [Status.OK]


def test_metrics_and_replication_ports_do_not_warn() -> None:
    metrics = ListenerInfo(
        index=0, type="metrics", port=9000, bind_addresses=("127.0.0.1",)
    )
    replication = listener(
        index=1, port=9093, x_forwarded=False, resources=frozenset({"replication"})
    )
    health = listener(
        index=2, port=8080, x_forwarded=False, resources=frozenset({"health"})
    )
    snapshot = make_snapshot(listeners=(PROXIED_LISTENER, metrics, replication, health))
    assert statuses("config.x_forwarded", snapshot) == [Status.OK]


def test_admin_only_port_next_to_the_proxied_one_does_not_warn() -> None:
    # The admin set up one proxied listener; the other local client port is for
    # admin tooling and no proxy fronts it.
    admin = listener(
        index=1, port=8009, x_forwarded=False, resources=frozenset({"client"})
    )
    snapshot = make_snapshot(listeners=(PROXIED_LISTENER, admin))
    assert statuses("config.x_forwarded", snapshot) == [Status.OK]


def test_public_listener_known_judges_only_that_listener_definitely() -> None:
    proxied = listener(index=0, x_forwarded=False)
    admin = listener(
        index=1, port=8009, x_forwarded=False, resources=frozenset({"client"})
    )
    snapshot = make_snapshot(listeners=(proxied, admin))
    [result] = results_for("config.x_forwarded", snapshot, public_listener_index=0)
    assert result.status is Status.WARN
    assert result.details == {"listener": proxied.label, "definite": True}
    assert not result.summary.startswith("if ")
    assert "reaches listeners[0]" in result.summary


def test_public_listener_known_and_configured_is_ok() -> None:
    admin = listener(
        index=1, port=8009, x_forwarded=False, resources=frozenset({"client"})
    )
    snapshot = make_snapshot(listeners=(PROXIED_LISTENER, admin))
    [result] = results_for("config.x_forwarded", snapshot, public_listener_index=0)
    assert result.status is Status.OK
    assert "listeners[0]" in result.summary


def test_public_listener_known_to_be_direct_tls_is_ok() -> None:
    direct = listener(
        tls=True, port=8448, bind_addresses=("0.0.0.0",), x_forwarded=False
    )
    snapshot = make_snapshot(listeners=(direct,))
    assert statuses("config.x_forwarded", snapshot, public_listener_index=0) == [
        Status.OK
    ]


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "93.184.215.14", "2606:4700::1111"])
def test_x_forwarded_on_exposed_listener_warns_about_spoofing(bind: str) -> None:
    snapshot = make_snapshot(listeners=(listener(bind_addresses=(bind,)),))
    [result] = results_for("config.x_forwarded", snapshot)
    assert result.status is Status.WARN
    assert "spoof" in result.summary
    assert "bind_addresses" in (result.fix or "")


def test_x_forwarded_on_public_listener_warns_even_when_it_is_the_public_one() -> None:
    snapshot = make_snapshot(listeners=(listener(bind_addresses=("93.184.215.14",)),))
    [result] = results_for("config.x_forwarded", snapshot, public_listener_index=0)
    assert result.status is Status.WARN and "spoof" in result.summary


def test_one_result_per_listener_problem() -> None:
    a = listener(index=0, x_forwarded=False)
    b = listener(
        index=1, port=8009, x_forwarded=False, unix_path="/run/s", bind_addresses=()
    )
    results = results_for("config.x_forwarded", make_snapshot(listeners=(a, b)))
    assert [r.details["listener"] for r in results] == [a.label, b.label]


# --- config.well_known -----------------------------------------------------------


def test_well_known_off_is_ok() -> None:
    assert statuses("config.well_known", make_snapshot()) == [Status.OK]


def test_well_known_on_with_client_listener_is_ok() -> None:
    [result] = results_for(
        "config.well_known", make_snapshot(serve_server_wellknown=True)
    )
    assert result.status is Status.OK
    assert result.details["advertises"] == "example.com:443"


def test_well_known_without_client_listener_warns() -> None:
    fed_only = listener(resources=frozenset({"federation"}))
    snapshot = make_snapshot(serve_server_wellknown=True, listeners=(fed_only,))
    [result] = results_for("config.well_known", snapshot)
    assert result.status is Status.WARN
    assert "client" in result.summary
    assert "serve_server_wellknown" in (result.fix or "")


def test_well_known_without_federation_listener_warns() -> None:
    client_only = listener(resources=frozenset({"client"}))
    snapshot = make_snapshot(serve_server_wellknown=True, listeners=(client_only,))
    [result] = results_for("config.well_known", snapshot)
    assert result.status is Status.WARN
    assert "no listener serves federation" in result.summary


def test_well_known_pointing_at_443_while_synapse_terminates_tls_on_8448_warns() -> (
    None
):
    direct = listener(
        tls=True, port=8448, bind_addresses=("0.0.0.0",), x_forwarded=False
    )
    snapshot = make_snapshot(serve_server_wellknown=True, listeners=(direct,))
    [result] = results_for("config.well_known", snapshot)
    assert result.status is Status.WARN
    assert "8448" in result.summary and "443" in result.summary


def test_well_known_with_direct_tls_on_443_is_ok() -> None:
    direct = listener(
        tls=True, port=443, bind_addresses=("0.0.0.0",), x_forwarded=False
    )
    snapshot = make_snapshot(serve_server_wellknown=True, listeners=(direct,))
    assert statuses("config.well_known", snapshot) == [Status.OK]


@pytest.mark.parametrize("name", ["example.com:8448", "[2001:db8::1]"])
def test_well_known_never_fetched_for_port_or_ip_literal(name: str) -> None:
    snapshot = make_snapshot(serve_server_wellknown=True, server_name=name)
    [result] = results_for("config.well_known", snapshot)
    assert result.status is Status.OK
    assert "never fetch" in result.summary


# --- config.public_baseurl -----------------------------------------------------


def test_public_baseurl_ok() -> None:
    assert statuses("config.public_baseurl", make_snapshot()) == [Status.OK]


def test_public_baseurl_unset_warns() -> None:
    [result] = results_for("config.public_baseurl", make_snapshot(public_baseurl=None))
    assert result.status is Status.WARN
    assert "https://example.com/" in result.summary
    assert "public_baseurl" in (result.fix or "")


def test_public_baseurl_http_warns() -> None:
    [result] = results_for(
        "config.public_baseurl",
        make_snapshot(public_baseurl="http://matrix.example.com"),
    )
    assert result.status is Status.WARN
    assert "https://matrix.example.com/" in (result.fix or "")


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost:8008/",
        "https://127.0.0.1/",
        "https://synapse.internal/",
        "https://[::1]:8448/",
        "https://93.184.215.14/",
    ],
)
def test_public_baseurl_host_that_makes_no_sense_warns(url: str) -> None:
    assert statuses("config.public_baseurl", make_snapshot(public_baseurl=url)) == [
        Status.WARN
    ]


def test_public_baseurl_http_localhost_gives_two_results() -> None:
    snapshot = make_snapshot(public_baseurl="http://localhost:8008/")
    assert statuses("config.public_baseurl", snapshot) == [Status.WARN, Status.WARN]


def test_public_baseurl_private_host_is_fine_for_a_private_server() -> None:
    snapshot = make_snapshot(
        server_name="hs.internal", public_baseurl="https://hs.internal/"
    )
    assert statuses("config.public_baseurl", snapshot) == [Status.OK]


@pytest.mark.parametrize("url", ["matrix.example.com", "https://", "https://[::1/"])
def test_public_baseurl_not_a_url_warns(url: str) -> None:
    assert statuses("config.public_baseurl", make_snapshot(public_baseurl=url)) == [
        Status.WARN
    ]


# --- config.federation_restrictions ----------------------------------------------


def test_restrictions_none_is_ok() -> None:
    [result] = results_for("config.federation_restrictions", make_snapshot())
    assert result.status is Status.OK
    assert result.details["federation_disabled"] is False


def test_empty_whitelist_is_federation_disabled_on_purpose() -> None:
    [result] = results_for(
        "config.federation_restrictions", make_snapshot(federation_domain_whitelist=())
    )
    assert result.status is Status.OK
    assert result.details == {"federation_disabled": True}
    assert "disabled on purpose" in result.summary


def test_whitelist_warns() -> None:
    [result] = results_for(
        "config.federation_restrictions",
        make_snapshot(federation_domain_whitelist=("matrix.org", "example.net")),
    )
    assert result.status is Status.WARN
    assert "2 domain(s)" in result.summary and "matrix.org" in result.summary


def test_send_federation_off_without_senders_warns() -> None:
    snapshot = make_snapshot(send_federation=False, federation_sender_instances=())
    [result] = results_for("config.federation_restrictions", snapshot)
    assert result.status is Status.WARN
    assert "federation_sender_instances" in (result.fix or "")


def test_outbound_restricted_to_nobody_warns_and_to_workers_is_ok() -> None:
    assert statuses(
        "config.federation_restrictions",
        make_snapshot(outbound_federation_restricted_to=()),
    ) == [Status.WARN]
    [result] = results_for(
        "config.federation_restrictions",
        make_snapshot(outbound_federation_restricted_to=("proxy1",)),
    )
    assert result.status is Status.OK and "proxy1" in result.summary


def test_minimum_tls_13_warns() -> None:
    snapshot = make_snapshot(federation_client_minimum_tls_version="1.3")
    [result] = results_for("config.federation_restrictions", snapshot)
    assert result.status is Status.WARN
    assert "1.2" in (result.fix or "")


def test_minimum_tls_12_is_ok() -> None:
    snapshot = make_snapshot(federation_client_minimum_tls_version="1.2")
    assert statuses("config.federation_restrictions", snapshot) == [Status.OK]


# --- config.outbound_tls -----------------------------------------------------------


def test_outbound_tls_ok() -> None:
    assert statuses("config.outbound_tls", make_snapshot()) == [Status.OK]


def test_verify_certificates_off_warns() -> None:
    [result] = results_for(
        "config.outbound_tls", make_snapshot(federation_verify_certificates=False)
    )
    assert result.status is Status.WARN
    assert "federation_verify_certificates" in (result.fix or "")


def test_custom_ca_list_warns() -> None:
    snapshot = make_snapshot(
        federation_custom_ca_list=("/etc/ca.pem",), federation_verify_certificates=False
    )
    results = results_for("config.outbound_tls", snapshot)
    assert [r.status for r in results] == [Status.WARN, Status.WARN]
    assert results[1].details["federation_custom_ca_list"] == ["/etc/ca.pem"]


# --- config.signing_key -------------------------------------------------------------


def test_signing_key_ok() -> None:
    [result] = results_for("config.signing_key", make_snapshot())
    assert result.status is Status.OK
    assert "ed25519:a_abcd" in result.summary


def test_signing_key_missing_fails() -> None:
    snapshot = make_snapshot(
        signing_keys=(),
        signing_key_error="cannot read /data/x.signing.key: No such file",
    )
    [result] = results_for("config.signing_key", snapshot)
    assert result.status is Status.FAIL
    assert "No such file" in result.summary
    assert "signing_key_path" in (result.fix or "")


def test_signing_key_file_without_keys_fails() -> None:
    assert statuses("config.signing_key", make_snapshot(signing_keys=())) == [
        Status.FAIL
    ]


@pytest.mark.parametrize(
    ("interval_ms", "expected"),
    [
        (59 * 60 * 1000, Status.WARN),
        (60 * 60 * 1000, Status.OK),
        (7 * 24 * 3600 * 1000, Status.OK),
        (7 * 24 * 3600 * 1000 + 1, Status.WARN),
    ],
)
def test_key_refresh_interval_bounds(interval_ms: int, expected: Status) -> None:
    snapshot = make_snapshot(key_refresh_interval_ms=interval_ms)
    results = results_for("config.signing_key", snapshot)
    assert [r.status for r in results] == [expected]
    if expected is Status.WARN:
        assert "key_refresh_interval" in (results[0].fix or "")
