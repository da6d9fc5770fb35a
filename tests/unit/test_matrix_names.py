"""The one server-name grammar against Synapse's own, on names that sit on its
edges (the hypothesis oracles in test_config_lint_names.py and
test_remote_input_properties.py explore around these)."""

from __future__ import annotations

import pytest
from synapse.util.stringutils import (
    parse_and_validate_server_name as synapse_parse_and_validate,
)

from synapse_fedhealth.matrix_names import (
    ServerNameError,
    bare_host,
    dns_name_matches,
    names_cover_host,
    parse_and_validate_server_name,
    parse_ip,
    parse_server_name,
)

TRICKY_NAMES = [
    "",
    "example.com",
    "EXAMPLE.com",
    "example.com:8448",
    "example.com:1",
    "example.com:65535",
    "example.com:",
    "example.com:0",
    "example.com:65536",
    "example.com:000080",
    "example.com:+80",
    "example.com: 80",
    "example.com:８０",
    "example.com:80:80",
    "example.com.",
    "a..b",
    ".a",
    "a_b.example",
    "a.com\n",
    "exa mple.com",
    "https://example.com",
    "xn--bcher-kva.example",
    "a" * 64 + ".example",
    "localhost",
    "-.-",
    "1.2.3.4",
    "1.2.3.4:443",
    "01.2.3.4",
    "999.1.1.1",
    "::1",
    "ab:cd:ef",
    "[::1]",
    "[::1]:8448",
    "[::1]:",
    "[::1]:abc",
    "[::1",
    "::1]",
    "[::1]x",
    "[::1]]",
    "[::1]x:80",
    "x[::1]",
    "[]",
    "[:::]",
    "[::[]",
    "[1.2.3.4]",
    "[::ffff:1.2.3.4]",
    "[2001:db8::1]:65535",
    "[fe80::1%eth0]",
    "[::1%lo]:8448",
]


def _synapse(name: str) -> tuple[str, int | None] | None:
    try:
        return synapse_parse_and_validate(name)
    except ValueError:
        return None


def _ours(name: str) -> tuple[str, int | None] | None:
    try:
        return parse_and_validate_server_name(name)
    except ServerNameError:
        return None


def _spec_port(name: str) -> bool:
    port_text = name.rpartition(":")[2]
    return port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_grammar_agrees_with_synapse(name: str) -> None:
    theirs, ours = _synapse(name), _ours(name)
    if theirs is not None and theirs[1] is not None and not _spec_port(name):
        # Synapse's int() lets "+80", " 80", "８０" and 70000 through; no
        # connection can use such a port.
        assert ours is None
        return
    assert ours == theirs


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_strict_grammar_accepts_a_subset(name: str) -> None:
    try:
        parsed = parse_server_name(name)
    except ServerNameError:
        return
    assert _ours(name) == (parsed.written_host, parsed.port)
    assert bare_host(parsed.written_host) == parsed.host


def test_strict_grammar_adds_the_spec_and_dns_limits() -> None:
    long_label = "a" * 64 + ".example"
    assert _ours(long_label) == (long_label, None)
    with pytest.raises(ServerNameError, match="longer than 63"):
        parse_server_name(long_label)
    assert _ours("example.com:000080") == ("example.com", 80)
    with pytest.raises(ServerNameError, match="not a number from 1 to 65535"):
        parse_server_name("example.com:000080")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty server name"),
        ("example.com:abc", "invalid port in 'example.com:abc'"),
        ("example.com:0", "port out of range in 'example.com:0'"),
        ("[::1", "'[::1' is not a valid IPv6 literal"),
        ("a b", "'a b' has an invalid format"),
    ],
)
def test_synapse_style_wording(name: str, message: str) -> None:
    with pytest.raises(ServerNameError) as raised:
        parse_and_validate_server_name(name)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("text", "zone_ok", "expected"),
    [
        ("192.0.2.1", False, "192.0.2.1"),
        ("[2001:db8::1]", False, "2001:db8::1"),
        ("::ffff:192.0.2.1", False, "192.0.2.1"),
        ("[::ffff:192.0.2.1]", False, "192.0.2.1"),
        ("fe80::1%eth0", False, None),
        ("fe80::1%eth0", True, "fe80::1"),
        ("[::1", False, None),
        ("[[::1]]", False, None),
        ("example.com", False, None),
        ("", False, None),
    ],
)
def test_parse_ip(text: str, zone_ok: bool, expected: str | None) -> None:
    ip = parse_ip(text, zone_ok=zone_ok)
    assert (None if ip is None else str(ip)) == expected


@pytest.mark.parametrize(
    ("names", "host", "expected"),
    [
        (["*.example.com"], "matrix.example.com", True),
        (["*.example.com"], "example.com", False),
        (["*.com"], "com", False),
        (["*."], "localhost", False),
        (["2001:db8::1"], "[2001:db8::1]", True),
        (["192.0.2.1"], "::ffff:192.0.2.1", True),
        (["192.0.2.1"], "192.0.2.1.example", False),
    ],
)
def test_names_cover_host(names: list[str], host: str, expected: bool) -> None:
    assert names_cover_host(names, host) is expected


def test_a_wildcard_is_exactly_one_label() -> None:
    assert dns_name_matches("A.Example.COM.", "*.example.com")
    assert not dns_name_matches(".example.com", "*.example.com")
