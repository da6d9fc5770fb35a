"""Server-name grammar, "could this be public?", bind scopes and name matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from synapse.util.stringutils import parse_and_validate_server_name

from synapse_fedhealth.checks.config_names import (
    BindScope,
    bind_scope,
    non_public_reason,
)
from synapse_fedhealth.matrix_names import ServerNameError, parse_server_name
from synapse_fedhealth.matrix_names import (
    dns_name_matches as host_matches_dns_pattern,
)


@pytest.mark.parametrize(
    ("name", "host", "port"),
    [
        ("example.com", "example.com", None),
        ("example.com:8448", "example.com", 8448),
        ("1.2.3.4:1", "1.2.3.4", 1),
        ("[2001:db8::1]", "2001:db8::1", None),
        ("[2001:db8::1]:65535", "2001:db8::1", 65535),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
    ],
)
def test_parse_valid(name: str, host: str, port: int | None) -> None:
    parsed = parse_server_name(name)
    assert (parsed.host, parsed.port) == (host, port)


def test_ip_literals_are_recognised() -> None:
    assert parse_server_name("1.2.3.4").ip is not None
    assert parse_server_name("[::1]").ip is not None
    assert parse_server_name("example.com").ip is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        ":80",
        "a b",
        "ex/ample",
        "example.com:123456",
        "example.com:00000x",
        "[]",
        "[::1]:",
    ],
)
def test_parse_invalid(name: str) -> None:
    with pytest.raises(ServerNameError):
        parse_server_name(name)


# Names from the characters that matter to the grammar, so both parsers are
# exercised on the interesting edges (brackets, colons, dots, digits).
_server_names = st.text(alphabet="ab1-.:[]f", max_size=16)


@given(_server_names)
def test_accepts_only_what_synapse_accepts(name: str) -> None:
    try:
        parsed = parse_server_name(name)
    except ServerNameError:
        return
    synapse_host, synapse_port = parse_and_validate_server_name(name)
    assert synapse_host.strip("[]") == parsed.host
    assert synapse_port == parsed.port


@given(
    st.from_regex(r"\A[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}\Z"),
    st.none() | st.integers(min_value=1, max_value=65535),
)
def test_accepts_what_synapse_accepts_with_a_sane_port(
    host: str, port: int | None
) -> None:
    name = host if port is None else f"{host}:{port}"
    assert parse_and_validate_server_name(name) == (host, port)
    parsed = parse_server_name(name)
    assert (parsed.host, parsed.port) == (host, port)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "matrix.org",
        "8.8.8.8",
        "2606:4700::1111",
        "[2606:4700::1111]",
        "foo.test",
    ],
)
def test_public_hosts(host: str) -> None:
    assert non_public_reason(host) is None


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST",
        "a.localhost",
        "nas.local",
        "hs.internal",
        "box.lan",
        "x.home.arpa",
        "foo.invalid",
        "single",
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.1",
        "100.64.1.1",
        "169.254.1.1",
        "::1",
        "[fd12::1]",
        "fe80::1",
        "0.0.0.0",
    ],
)
def test_non_public_hosts(host: str) -> None:
    assert non_public_reason(host) is not None


@pytest.mark.parametrize(
    ("address", "scope"),
    [
        ("127.0.0.1", BindScope.LOCAL),
        ("::1", BindScope.LOCAL),
        ("localhost", BindScope.LOCAL),
        ("10.1.2.3", BindScope.LOCAL),
        ("fd00::5", BindScope.LOCAL),
        ("::ffff:192.168.1.2", BindScope.LOCAL),
        ("0.0.0.0", BindScope.WILDCARD),
        ("::", BindScope.WILDCARD),
        ("", BindScope.WILDCARD),
        ("8.8.8.8", BindScope.PUBLIC),
        ("2606:4700::1111", BindScope.PUBLIC),
        ("matrix.example.com", BindScope.UNKNOWN),
    ],
)
def test_bind_scope(address: str, scope: BindScope) -> None:
    assert bind_scope(address) is scope


@pytest.mark.parametrize(
    ("host", "pattern", "expected"),
    [
        ("example.com", "example.com", True),
        ("example.com.", "EXAMPLE.COM", True),
        ("a.example.com", "*.example.com", True),
        ("example.com", "*.example.com", False),
        ("a.b.example.com", "*.example.com", False),
        ("a.example.com", "a.*.com", False),
    ],
)
def test_dns_pattern(host: str, pattern: str, expected: bool) -> None:
    assert host_matches_dns_pattern(host, pattern) is expected
