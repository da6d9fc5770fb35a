"""The check reference, `docs/checks.md`, read from the installed package.

Reports link `docs/checks.md#<anchor>`, a path in the source repository. An
admin who installed the wheel has no such file, so the wheel ships the same
file as package data (`synapse_fedhealth/_docs/checks.md`) and the HTML page
shows each entry itself.
"""

from __future__ import annotations

import functools
import pathlib
import re
from importlib import resources

_ENTRY_HEADING = re.compile(r"^### `([a-z_.]+)`\s*$", re.MULTILINE)


def installed_docs_path() -> str | None:
    """Where checks.md is on this machine (an ordinary install unpacks it),
    for text output to point at; None when the package is not on disk."""
    path = resources.files("synapse_fedhealth").joinpath("_docs/checks.md")
    # Only a file on disk has a path to give (not one inside a zip import).
    if not isinstance(path, pathlib.Path) or not path.is_file():
        return None
    return str(path)


@functools.lru_cache(maxsize=1)
def check_docs() -> dict[str, str]:
    """Check id -> its entry's Markdown (without the heading).

    Empty when the file is missing (a broken install): the page then shows
    the report without the entries rather than failing.
    """
    try:
        text = (
            resources.files("synapse_fedhealth")
            .joinpath("_docs/checks.md")
            .read_text(encoding="utf-8")
        )
    except (OSError, UnicodeDecodeError):
        return {}
    return split_entries(text)


def split_entries(markdown: str) -> dict[str, str]:
    """Split checks.md into its `### \\`id\\`` entries.

    An entry ends at the next heading of level 1 to 3 (or an HTML comment
    that marks a generated section).
    """
    entries: dict[str, str] = {}
    matches = list(_ENTRY_HEADING.finditer(markdown))
    for match in matches:
        body = markdown[match.end() :]
        end = re.search(r"^(#{1,3} |<!--)", body, flags=re.MULTILINE)
        entries[match.group(1)] = (body[: end.start()] if end else body).strip()
    return entries
