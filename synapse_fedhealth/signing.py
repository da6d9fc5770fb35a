"""Matrix signing keys and signatures: key ids, unpadded base64, the parsed
`/_matrix/key/v2/server` answer, verifying and signing.

Synapse signs and verifies with signedjson over canonicaljson
(synapse/crypto/keyring.py, synapse/rest/key/v2/local_key_resource.py), so
the same libraries here make "verifies for us" mean "verifies for Synapse":
same canonical form, same base64 decoding, same key id rules.

Key answers are remote input of any shape. Everything here that reads one
returns a value, None or False and never raises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attr
from canonicaljson import encode_canonical_json
from signedjson.key import decode_verify_key_bytes, is_signing_algorithm_supported
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64 as _decode_unpadded_base64

# A key answer with more keys than this is not a Synapse one (it serves its
# current key, one per `signing_key` entry); the rest are not looked at.
MAX_KEYS_CHECKED = 16

# Limits of what a remote JSON answer may put into the report.
MAX_REPORTED_DEPTH = 16
MAX_REPORTED_ITEMS = 100

# What canonical JSON cannot encode: NaN/Infinity and integers beyond
# Python's int-to-str limit (ValueError), lone surrogates
# (UnicodeEncodeError, a ValueError), non-string keys or other types
# (TypeError), and nesting beyond the interpreter's limit.
_UNENCODABLE = (ValueError, TypeError, RecursionError)


def canonical_json(value: object) -> bytes:
    """Matrix canonical JSON, as Synapse and signedjson encode it. Raises
    ValueError, TypeError or RecursionError for what has no canonical form."""
    encoded: bytes = encode_canonical_json(value)
    return encoded


# ---------------------------------------------------------------------------
# Key ids and base64


def is_ed25519_key_id(value: object) -> bool:
    """`ed25519:<version>`: the only algorithm Synapse signs or verifies with
    (signedjson's `is_signing_algorithm_supported`)."""
    return isinstance(value, str) and bool(is_signing_algorithm_supported(value))


def decode_base64(text: object) -> bytes | None:
    """Bytes of unpadded (or padded, or URL-safe) base64, decoded as Synapse
    decodes keys and signatures; None when it is not base64 or not a string."""
    if not isinstance(text, str):
        return None
    try:
        decoded: bytes = _decode_unpadded_base64(text)
    except ValueError:  # binascii.Error; UnicodeEncodeError for non-ASCII
        return None
    return decoded


def verify_key_from_bytes(key_id: str, key_bytes: bytes) -> VerifyKey | None:
    """The signedjson verify key, or None when `key_id` is not an ed25519 id
    or the bytes are not a 32-byte Ed25519 public key."""
    if not is_ed25519_key_id(key_id):
        return None
    try:
        key: VerifyKey = decode_verify_key_bytes(key_id, key_bytes)
    except (ValueError, TypeError):  # nacl's length and type checks
        return None
    return key


def served_key_map(section: object) -> dict[str, bytes | None]:
    """`{key_id: raw bytes, or None when undecodable}` from `verify_keys` /
    `old_verify_keys`, ignoring entries of the wrong shape."""
    out: dict[str, bytes | None] = {}
    if not isinstance(section, Mapping):
        return out
    for key_id, entry in section.items():
        if not isinstance(key_id, str):
            continue
        value = entry.get("key") if isinstance(entry, Mapping) else None
        out[key_id] = decode_base64(value)
    return out


# ---------------------------------------------------------------------------
# Signatures


def signatures_by(obj: Mapping[str, Any], signer: str) -> Mapping[str, Any]:
    """`obj["signatures"][signer]`, or {} when the object has no such map."""
    signatures = obj.get("signatures")
    if not isinstance(signatures, Mapping):
        return {}
    by_signer = signatures.get(signer)
    return by_signer if isinstance(by_signer, Mapping) else {}


def signature_key_ids(obj: Mapping[str, Any], signer: str) -> list[str]:
    """The key ids `signer` signed `obj` with."""
    return [k for k in signatures_by(obj, signer) if isinstance(k, str)]


def signature_verifies(obj: Mapping[str, Any], signer: str, key: VerifyKey) -> bool:
    """Does `obj` carry a valid signature by `signer` with `key`, over its
    canonical JSON without `signatures` and `unsigned`?"""
    key_id = f"{key.alg}:{key.version}"
    # signedjson indexes these maps directly: other shapes would raise
    # TypeError from inside it, so they are a plain "no" here.
    if not isinstance(signatures_by(obj, signer).get(key_id), str):
        return False
    try:
        verify_signed_json(dict(obj), signer, key)
    except (SignatureVerifyException, *_UNENCODABLE):
        return False
    return True


def signature_verifies_with_bytes(
    obj: Mapping[str, Any], signer: str, key_id: str, key_bytes: bytes
) -> bool:
    """`signature_verifies` with a key given as its id and raw bytes."""
    key = verify_key_from_bytes(key_id, key_bytes)
    return key is not None and signature_verifies(obj, signer, key)


def sign(
    obj: Mapping[str, Any], signer: str, signing_key: SigningKey
) -> dict[str, str]:
    """`{key_id: unpadded base64 signature}`: the signature of `signer` over
    `obj` with `signing_key` (a signedjson key), made as Synapse signs.
    `obj` is left unchanged (signedjson would add to its `signatures` map)."""
    unsigned_copy = {k: v for k, v in obj.items() if k != "signatures"}
    signed: dict[str, Any] = sign_json(unsigned_copy, signer, signing_key)
    by_signer: dict[str, str] = signed["signatures"][signer]
    return by_signer


# ---------------------------------------------------------------------------
# The /_matrix/key/v2/server answer


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class KeyCheck:
    """One served ed25519 key: does it decode, and does it sign the answer?"""

    key_id: str
    valid_key: bool
    signature_ok: bool

    def to_json(self) -> dict[str, bool]:
        return {"ValidEd25519": self.valid_key, "MatchingSignature": self.signature_ok}


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ServedKeys:
    """The parsed /_matrix/key/v2/server answer of one address."""

    address: str
    raw: Mapping[str, Any]  # the answer, cut to what a report can render
    server_name: str | None
    valid_until_ts: int | None
    ed25519_keys: Mapping[str, str]  # key id -> unpadded base64 public key
    key_checks: tuple[KeyCheck, ...]

    def federation_tester_checks(
        self, expected_server_name: str, now_ms: int
    ) -> dict[str, Any]:
        matching = self.server_name == expected_server_name
        future = self.valid_until_ts is not None and self.valid_until_ts > now_ms
        has_key = bool(self.key_checks)
        all_keys = has_key and all(
            k.valid_key and k.signature_ok for k in self.key_checks
        )
        return {
            "AllChecksOK": matching and future and has_key and all_keys,
            "MatchingServerName": matching,
            "FutureValidUntilTS": future,
            "HasEd25519Key": has_key,
            "AllEd25519ChecksOK": all_keys,
            "Ed25519Checks": {k.key_id: k.to_json() for k in self.key_checks},
        }


def json_safe(value: Any, depth: int = 0) -> Any:
    """A copy of parsed remote JSON that any JSON encoder renders: nesting
    beyond MAX_REPORTED_DEPTH and containers beyond MAX_REPORTED_ITEMS are cut,
    and NaN/Infinity (which json.loads accepts) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict | list):
        if depth >= MAX_REPORTED_DEPTH:
            return "… (nested too deeply)"
        if isinstance(value, dict):
            items = list(value.items())[:MAX_REPORTED_ITEMS]
            return {str(k): json_safe(v, depth + 1) for k, v in items}
        return [json_safe(v, depth + 1) for v in value[:MAX_REPORTED_ITEMS]]
    return value


def _check_key(
    body: Mapping[str, Any], signer: str | None, key_id: str, entry: object
) -> tuple[KeyCheck, str | None]:
    """One `verify_keys` entry: its check, and its base64 when it is a key."""
    key_b64 = entry.get("key") if isinstance(entry, Mapping) else None
    key_bytes = decode_base64(key_b64)
    key = verify_key_from_bytes(key_id, key_bytes) if key_bytes is not None else None
    signature_ok = (
        key is not None and signer is not None and signature_verifies(body, signer, key)
    )
    check = KeyCheck(
        key_id=key_id, valid_key=key is not None, signature_ok=signature_ok
    )
    return check, key_b64 if key is not None and isinstance(key_b64, str) else None


def parse_served_keys(address: str, body: Mapping[str, Any]) -> ServedKeys:
    """Parse a key answer of any shape; each ed25519 key is checked against
    the self-signature of the `server_name` the answer names."""
    server_name = body.get("server_name")
    signer = server_name if isinstance(server_name, str) else None
    valid_until = body.get("valid_until_ts")  # JSON true/false are not ints here
    verify_keys = body.get("verify_keys")
    ed_keys: dict[str, str] = {}
    checks: list[KeyCheck] = []
    if isinstance(verify_keys, Mapping):
        for key_id, entry in list(verify_keys.items())[:MAX_KEYS_CHECKED]:
            if not is_ed25519_key_id(key_id):
                continue
            check, key_b64 = _check_key(body, signer, key_id, entry)
            checks.append(check)
            if key_b64 is not None:
                ed_keys[key_id] = key_b64
    return ServedKeys(
        address=address,
        raw=json_safe(body),
        server_name=signer,
        valid_until_ts=valid_until if type(valid_until) is int else None,
        ed25519_keys=ed_keys,
        key_checks=tuple(checks),
    )
