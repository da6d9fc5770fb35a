"""The module's own settings (SPEC 2.1): parsed and validated once.

This file does not import Synapse, so the command line can use it. Errors are
raised as `FedHealthConfigError` carrying the offending key; the module facade
turns them into Synapse's `ConfigError`, which names the key in Synapse's
start-up error ("modules.<item 0>.config.timeout: ...").
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import attr

from synapse_fedhealth.matrix_names import ServerNameError, parse_server_name

MS_PER_SECOND = 1000
_DURATION_UNITS_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60 * 1000,
    "h": 60 * 60 * 1000,
    "d": 24 * 60 * 60 * 1000,
    "w": 7 * 24 * 60 * 60 * 1000,
    "y": 365 * 24 * 60 * 60 * 1000,
}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)?\s*$")
# Far above every bound below, and small enough to print: float("1" * 400) is
# infinity (int() of it raises OverflowError), and an int of more than 4,300
# digits can't even be formatted into an error message.
MAX_DURATION_MS = 10**15  # about 31,000 years
MAX_DURATION_NUMBER_CHARS = 32

# Bounds keep a typo from turning the module into a load generator or a no-op.
MIN_TIMEOUT_MS = 500
MAX_TIMEOUT_MS = 5 * 60 * 1000
MIN_INTERVAL_MS = 10 * 1000  # below this the checks would hammer our own proxy
MAX_STARTUP_DELAY_MS = 60 * 60 * 1000
MAX_CACHE_TTL_MS = 24 * 60 * 60 * 1000
MAX_CERT_EXPIRY_WARNING_DAYS = 365
MAX_DNS_SERVERS = 8
# Each probe server costs two requests per minute at most (SPEC 2.2).
MAX_OUTBOUND_PROBE_SERVERS = 16


class FedHealthConfigError(Exception):
    """A bad module setting. `key` is the name of the offending config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class FedHealthConfig:
    startup_check: bool = True
    startup_delay_ms: int = 5 * MS_PER_SECOND
    interval_ms: int = 60 * 60 * MS_PER_SECOND  # 0 disables the periodic run
    timeout_ms: int = 10 * MS_PER_SECOND
    cache_ttl_ms: int = 60 * MS_PER_SECOND
    cert_expiry_warning_days: int = 14
    tls_ca_file: str | None = None
    dns_servers: tuple[str, ...] = ()
    notary_check: bool = True
    # None: the trusted key servers' names; (): no active outbound probe.
    outbound_probe_servers: tuple[str, ...] | None = None

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / MS_PER_SECOND


def parse_duration_ms(value: object) -> int:
    """Parse a duration the way Synapse does: an int is milliseconds, a string
    has a unit suffix (ms, s, m, h, d, w, y) or none (milliseconds).

    Raises ValueError with a readable message.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '10s', not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        if value > MAX_DURATION_MS:
            raise ValueError(f"is too long (more than {MAX_DURATION_MS} ms)")
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"expected a duration such as '500ms', '10s', '5m', '1h' or '1d', "
            f"not {type(value).__name__}"
        )
    match = _DURATION_RE.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration; use forms such as '500ms', '10s', '5m', "
            "'1h', '1d' or an integer number of milliseconds"
        )
    number, unit = match.groups()
    if len(number) > MAX_DURATION_NUMBER_CHARS:
        raise ValueError(
            f"has too many digits (at most {MAX_DURATION_NUMBER_CHARS}); "
            "use a larger unit"
        )
    # Exact arithmetic: a float could round "0.29s" down to 289 ms.
    ms = int(Fraction(number) * _DURATION_UNITS_MS[unit or "ms"])
    if ms > MAX_DURATION_MS:
        raise ValueError(f"is too long (more than {MAX_DURATION_MS} ms)")
    return ms


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise FedHealthConfigError(key, f"expected true or false, not {value!r}")
    return value


def _duration(
    key: str, lo: int, hi: int, *, allow_zero: bool = False
) -> Callable[[object], int]:
    def parse(value: object) -> int:
        try:
            ms = parse_duration_ms(value)
        except ValueError as e:
            raise FedHealthConfigError(key, str(e)) from None
        if allow_zero and ms == 0:
            return 0
        if not lo <= ms <= hi:
            zero = " (or 0 to turn it off)" if allow_zero else ""
            raise FedHealthConfigError(
                key, f"must be between {lo} ms and {hi} ms{zero}; got {ms} ms"
            )
        return ms

    return parse


def _warning_days(value: object) -> int:
    key = "cert_expiry_warning_days"
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedHealthConfigError(
            key, f"expected a whole number of days, not {value!r}"
        )
    if not 0 <= value <= MAX_CERT_EXPIRY_WARNING_DAYS:
        raise FedHealthConfigError(
            key, f"must be between 0 and {MAX_CERT_EXPIRY_WARNING_DAYS}; got {value}"
        )
    return value


def _ca_file(value: object) -> str | None:
    key = "tls_ca_file"
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FedHealthConfigError(key, f"expected a path to a PEM file, not {value!r}")
    if not os.path.isfile(value):
        raise FedHealthConfigError(key, f"{value!r} is not a readable file")
    try:
        with open(value, "rb") as f:
            head = f.read(64 * 1024)
    except OSError as e:
        raise FedHealthConfigError(
            key, f"cannot read {value!r}: {e.strerror}"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise FedHealthConfigError(key, f"{value!r} contains no PEM certificate")
    return value


def _string_list(
    key: str,
    value: list[object],
    *,
    what: str,
    at_most: int,
    validate: Callable[[str], object],
) -> tuple[str, ...]:
    """Each entry a string that `validate` accepts (a ValueError says why
    not); duplicates dropped."""
    if len(value) > at_most:
        raise FedHealthConfigError(key, f"at most {at_most} servers")
    entries: list[str] = []
    for entry in value:
        if not isinstance(entry, str):
            raise FedHealthConfigError(key, f"expected {what}, not {entry!r}")
        try:
            validate(entry)
        except ValueError as e:
            raise FedHealthConfigError(key, str(e)) from None
        if entry not in entries:
            entries.append(entry)
    return tuple(entries)


def _dns_servers(value: object) -> tuple[str, ...]:
    key = "dns_servers"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FedHealthConfigError(
            key, f"expected a list of IP addresses, not {value!r}"
        )
    return _string_list(
        key,
        value,
        what="an IP address",
        at_most=MAX_DNS_SERVERS,
        validate=parse_dns_server,
    )


def _server_name(entry: str) -> None:
    try:
        parse_server_name(entry)
    except ServerNameError as e:
        raise ValueError(f"{entry!r} is not a server name: {e}") from None


def _outbound_probe_servers(value: object) -> tuple[str, ...] | None:
    key = "outbound_probe_servers"
    if value is None:
        return None
    if not isinstance(value, list):
        raise FedHealthConfigError(
            key,
            f"expected a list of server names such as ['matrix.org'], not {value!r}",
        )
    return _string_list(
        key,
        value,
        what="a server name",
        at_most=MAX_OUTBOUND_PROBE_SERVERS,
        validate=_server_name,
    )


def parse_dns_server(entry: str) -> tuple[str, int]:
    """Split "IP", "IP:PORT" or "[IPv6]:PORT" into (ip, port). Names are refused:
    resolving the resolver would need a resolver."""
    host, port = entry, 53
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep:
            raise ValueError(f"{entry!r} is not an IP address")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{entry!r} has a bad port")
            port = int(rest[1:])
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"{entry!r} has a bad port")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"{entry!r} has a port out of range")
    return host, port


_PARSERS: Mapping[str, Callable[[object], Any]] = {
    "startup_check": lambda v: _bool("startup_check", v),
    "startup_delay": _duration("startup_delay", 0, MAX_STARTUP_DELAY_MS),
    "interval": _duration(
        "interval", MIN_INTERVAL_MS, 7 * 24 * 3600 * 1000, allow_zero=True
    ),
    "timeout": _duration("timeout", MIN_TIMEOUT_MS, MAX_TIMEOUT_MS),
    "cache_ttl": _duration("cache_ttl", 0, MAX_CACHE_TTL_MS),
    "cert_expiry_warning_days": _warning_days,
    "tls_ca_file": _ca_file,
    "dns_servers": _dns_servers,
    "notary_check": lambda v: _bool("notary_check", v),
    "outbound_probe_servers": _outbound_probe_servers,
}

_FIELD_FOR_KEY = {
    "startup_delay": "startup_delay_ms",
    "interval": "interval_ms",
    "timeout": "timeout_ms",
    "cache_ttl": "cache_ttl_ms",
}

KNOWN_KEYS = tuple(_PARSERS)


def parse_fedhealth_config(raw: object) -> FedHealthConfig:
    """Validate the `config:` block of the module. None means all defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise FedHealthConfigError(
            "config", f"expected a mapping, not {type(raw).__name__}"
        )
    for key in raw:
        if key not in _PARSERS:
            raise FedHealthConfigError(
                str(key), f"unknown option; known options are: {', '.join(KNOWN_KEYS)}"
            )
    values: dict[str, Any] = {
        _FIELD_FOR_KEY.get(str(key), str(key)): _PARSERS[str(key)](value)
        for key, value in raw.items()
    }
    config = FedHealthConfig(**values)
    if config.interval_ms and config.interval_ms < config.timeout_ms:
        raise FedHealthConfigError(
            "interval", "must be longer than `timeout` (or 0 to turn periodic runs off)"
        )
    return config
