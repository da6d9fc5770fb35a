"""Plain facts from an HTTP answer of a server we don't trust.

The insider checks take what the network layer received (status, headers,
body) and judge it here, without any I/O. Every helper accepts hostile input
(any bytes, any JSON shape) and never raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# Longest excerpt of a remote answer quoted in a summary: enough to recognise
# an nginx error page, short enough for a log line.
EXCERPT_CHARS = 120

# A header map as the network layer hands it over: lower-case names, each
# with its values (a bare string is accepted as one value).
Headers = Mapping[str, Sequence[str] | str]


def header_value(headers: Headers, name: str) -> str | None:
    """The last value of header `name` (case-insensitive), or None."""
    wanted = name.lower()
    for key, values in headers.items():
        if not isinstance(key, str) or key.lower() != wanted:
            continue
        if isinstance(values, str):
            return values
        if values:
            last = values[-1]
            return last if isinstance(last, str) else None
    return None


def content_type(headers: Headers) -> str | None:
    value = header_value(headers, "content-type")
    if value is None:
        return None
    return value.split(";", 1)[0].strip().lower()


def parse_json(body: bytes) -> tuple[Any, str]:
    """(value, "") for any JSON document, or (None, what is wrong)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, "the body is not valid UTF-8"
    try:
        return json.loads(text), ""
    except (ValueError, RecursionError):
        return None, "the body is not valid JSON"


def parse_json_object(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """(object, "") or (None, what is wrong)."""
    value, problem = parse_json(body)
    if problem:
        return None, problem
    if not isinstance(value, dict):
        return None, f"the body is JSON but not an object ({type(value).__name__})"
    return value, ""


def matrix_error(body: bytes) -> tuple[str, str] | None:
    """(errcode, error) when the body is a Matrix error object, else None."""
    obj, _ = parse_json_object(body)
    if obj is None:
        return None
    errcode = obj.get("errcode")
    if not isinstance(errcode, str):
        return None
    error = obj.get("error")
    return errcode, error if isinstance(error, str) else ""


def excerpt(body: bytes) -> str:
    """The start of a body, printable, for a summary."""
    text = body[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "…"
    return text


def describe_answer(status: int, headers: Headers, body: bytes) -> str:
    """Who answered what, e.g. `HTTP 502 (text/html, Server: nginx/1.22.1): "<html>…"`."""
    parts = []
    ctype = content_type(headers)
    if ctype:
        parts.append(ctype)
    server = header_value(headers, "server")
    if server:
        parts.append(f"Server: {server[:60]}")
    out = f"HTTP {status}"
    if parts:
        out += " (" + ", ".join(parts) + ")"
    text = excerpt(body)
    if text:
        out += f': "{text}"'
    return out


def int_field(obj: Mapping[str, Any], name: str) -> int | None:
    """An integer field; JSON booleans and floats don't count."""
    value = obj.get(name)
    return value if type(value) is int else None


def request_details(request: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The caller's request facts (url, host_header, sni, ...) plus ours."""
    details = dict(request)
    details.update(extra)
    return details
