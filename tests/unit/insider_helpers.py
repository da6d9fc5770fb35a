"""Shared by the insider-check tests: real signedjson keys, signed key
responses built the way Synapse builds them, and the property settings
(from tests/hypothesis_settings.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import sign_json

from synapse_fedhealth.homeserver import SigningKeyInfo, TrustedKeyServerInfo
from tests.hypothesis_settings import PROPERTY_SETTINGS as PROPERTY_SETTINGS

SERVER_NAME = "example.com"
NOTARY_NAME = "notary.example.org"
REQUEST = {
    "url": "https://example.com/_matrix/x",
    "host_header": "example.com",
    "sni": "example.com",
}


def make_key(version: str = "a_AbCd") -> SigningKeyInfo:
    key = generate_signing_key(version)
    return SigningKeyInfo(
        key_id=f"ed25519:{version}",
        verify_key_base64=encode_verify_key_base64(get_verify_key(key)),
        signing_key=key,
    )


def notary_info(
    key: SigningKeyInfo | None, name: str = NOTARY_NAME
) -> TrustedKeyServerInfo:
    return TrustedKeyServerInfo(
        server_name=name,
        verify_keys=None if key is None else {key.key_id: key.verify_key_base64},
    )


def key_response(
    server_name: str,
    key: SigningKeyInfo,
    *,
    valid_until_ts: int,
    old_keys: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`GET /_matrix/key/v2/server` as local_key_resource.py builds it."""
    obj: dict[str, Any] = {
        "valid_until_ts": valid_until_ts,
        "server_name": server_name,
        "verify_keys": {key.key_id: {"key": key.verify_key_base64}},
        "old_verify_keys": old_keys or {},
    }
    signed: dict[str, Any] = sign_json(obj, server_name, key.signing_key)
    return signed


def notarised(response: dict[str, Any], notary_key: SigningKeyInfo) -> dict[str, Any]:
    """A key response countersigned as remote_key_resource.py does."""
    signed: dict[str, Any] = sign_json(
        dict(response), NOTARY_NAME, notary_key.signing_key
    )
    return signed


# Any JSON value, bounded in size.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=15), children, max_size=5)
    ),
    max_leaves=25,
)
