"""The X-Matrix `Authorization` header, as Synapse builds and reads it.

Built like `MatrixFederationHttpClient.build_auth_headers`
(synapse/http/matrixfederationclient.py, 1.163): the signed object is
`{"method", "uri", "origin", "destination"}` where `uri` is the path and query
exactly as sent (percent-encoded), and the header lists
`origin, key, sig, destination` in that order with quoted values.
"""

from __future__ import annotations

import re
from typing import Any

import attr

from synapse_fedhealth.signing import sign

XMATRIX_SCHEME = "X-Matrix"

# Values that need no escaping inside a quoted-string (RFC 9110 qdtext minus
# the backslash); anything else is backslash-escaped, which Synapse's
# `strip_quotes` undoes.
_NEEDS_ESCAPE = re.compile(r'(["\\])')
_PARAM = re.compile(
    r"""[ \t]*([A-Za-z0-9_.-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^,]*?)[ \t]*(?:,|\Z)""",
    re.DOTALL,
)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class XMatrixAuth:
    """The parameters of one X-Matrix header."""

    origin: str
    key: str  # "ed25519:abc"
    sig: str  # unpadded base64
    destination: str | None = None


def signed_request_json(
    *, method: str, uri: str, origin: str, destination: str, content: Any = None
) -> dict[str, Any]:
    """The object a federation request signature covers (Synapse's layout)."""
    request: dict[str, Any] = {"method": method, "uri": uri, "origin": origin}
    request["destination"] = destination
    if content is not None:
        request["content"] = content
    return request


def sign_request(
    signing_key: Any,
    *,
    origin: str,
    destination: str,
    method: str,
    uri: str,
    content: Any = None,
) -> list[XMatrixAuth]:
    """Sign a request; one header per signature, as Synapse sends them.

    `signing_key` is a signedjson/nacl signing key (with `alg` and `version`).
    """
    request = signed_request_json(
        method=method, uri=uri, origin=origin, destination=destination, content=content
    )
    return [
        XMatrixAuth(origin=origin, key=key_id, sig=sig, destination=destination)
        for key_id, sig in sign(request, origin, signing_key).items()
    ]


def _quote(value: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(r"\\\1", value) + '"'


def format_xmatrix_header(auth: XMatrixAuth) -> str:
    """`X-Matrix origin="…",key="…",sig="…",destination="…"` (Synapse's order)."""
    params = [
        f"origin={_quote(auth.origin)}",
        f"key={_quote(auth.key)}",
        f"sig={_quote(auth.sig)}",
    ]
    if auth.destination is not None:
        params.append(f"destination={_quote(auth.destination)}")
    return f"{XMATRIX_SCHEME} " + ",".join(params)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    return value


def parse_xmatrix_header(header: str) -> XMatrixAuth | None:
    """Parse an X-Matrix header; None when it is not one or is malformed.

    Stricter than Synapse's `_parse_auth_header` about structure (quoted
    values may contain commas), never raises.
    """
    if not header.startswith(XMATRIX_SCHEME + " "):
        return None
    rest = header[len(XMATRIX_SCHEME) + 1 :].lstrip(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None or match.end() == pos:
            return None
        params[match.group(1).lower()] = _unquote(match.group(2))
        pos = match.end()
    try:
        return XMatrixAuth(
            origin=params["origin"],
            key=params["key"],
            sig=params["sig"],
            destination=params.get("destination"),
        )
    except KeyError:
        return None
