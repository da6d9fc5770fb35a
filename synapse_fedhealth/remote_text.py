"""Text that came from the network, made safe for every output.

A remote server chooses the strings we copy into summaries and details:
JSON values, header values, names, error messages. Written as they are,
a newline forges a log line, an ANSI escape repaints the admin's terminal,
a bidi override reorders what they read, and a lone surrogate ("\\ud800",
valid in JSON) cannot be encoded as UTF-8, so the text page answers 500,
the CLI crashes and log handlers drop the line.

`clean_line` escapes all of those, visibly (`\\x1b`, `\\n`, `\\ud800`): it is
applied once where remote text enters (`net/http.py` for headers, redirect
locations and network errors; the judges for JSON values), and again as a
last resort by every output (`clean_text` for multi-line text such as the
text report, `clean_json` for the JSON report), so a value that was missed
is escaped rather than breaking the output.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls, DEL and C1 controls (0x9b is a one-byte CSI), the bidi
# embeddings, overrides and isolates, line/paragraph separators, and
# surrogates (only lone ones survive decoding into a str).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_UNSAFE_IN_TEXT = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean_line(text: str) -> str:
    """`text` on one line, with every unsafe character escaped."""
    if _UNSAFE.search(text) is None:
        return text  # the common case, without a copy
    return _UNSAFE.sub(_escape, text)


def clean_text(text: str) -> str:
    """Like `clean_line`, but keeps newlines: for text made of lines."""
    if _UNSAFE_IN_TEXT.search(text) is None:
        return text
    return _UNSAFE_IN_TEXT.sub(_escape, text)


# In ASCII JSON (`ensure_ascii`), every character `_UNSAFE` matches shows up
# as one of these: an escape (\\n, \\u001b, \\u0085, \\u202e, \\ud800, ...)
# or, for DEL, itself. A match may be harmless (an escaped backslash before
# an "n"); no match means no string needs cleaning.
_UNSAFE_IN_ASCII_JSON = re.compile(
    r"\\[bfnrt]|\\u00[0189][0-9a-f]|\\u007f|\x7f"
    r"|\\u202[89a-e]|\\u206[6-9]|\\ud[89a-f][0-9a-f]{2}"
)


def encode_clean_json(encoder: json.JSONEncoder, value: Any) -> str:
    """`encoder.encode(clean_json(value))`, for an ASCII encoder, without
    the copy in the common case: a report is encoded as it is, and cleaned
    and encoded again only when its JSON text shows an unsafe character
    (walking a 16-address report costs twice what encoding it does)."""
    encoded: str = encoder.encode(value)
    if _UNSAFE_IN_ASCII_JSON.search(encoded) is None:
        return encoded
    cleaned: str = encoder.encode(clean_json(value))
    return cleaned


def clean_json(value: Any) -> Any:
    """A copy of a JSON-shaped value whose strings (keys too) are clean
    lines; other values are kept as they are."""
    if isinstance(value, str):
        return clean_line(value)
    if isinstance(value, dict):
        return {
            (clean_line(k) if isinstance(k, str) else k): clean_json(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value
