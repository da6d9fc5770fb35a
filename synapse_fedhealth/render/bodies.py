"""The endpoint's response bodies: each report encoded once per format.

A report does not change once built, and every admin request between two
runs is answered with the same one, so its JSON, text and HTML bodies are
encoded the first time each is asked for and kept with the report: a request
then costs its authentication and a write of bytes already made. A new report
(a run, a refresh) comes with bodies of its own; only the latest report's are
kept.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Mapping

from synapse_fedhealth.check_docs import check_docs, installed_docs_path
from synapse_fedhealth.remote_text import encode_clean_json
from synapse_fedhealth.render.html import render_html
from synapse_fedhealth.render.text import TEXT_WIDTH, render_text
from synapse_fedhealth.report import Report

# Synapse's own JSON encoding (`synapse.util.json.json_encoder`): compact,
# ASCII, no NaN; the body is the same bytes Synapse would have sent.
_JSON_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def encode_json(report: Report) -> bytes:
    # Cleaning is the last resort against a lone surrogate or a control
    # character in any value, which a JSON client may choke on.
    return encode_clean_json(_JSON_ENCODER, report.to_json()).encode("ascii")


def encode_text(report: Report) -> bytes:
    return render_text(
        report, width=TEXT_WIDTH, docs_path=installed_docs_path()
    ).encode("utf-8")


def encode_html(report: Report) -> bytes:
    return render_html(report, docs=check_docs()).encode("utf-8")


ENCODERS: Mapping[str, Callable[[Report], bytes]] = {
    "json": encode_json,
    "text": encode_text,
    "html": encode_html,
}
FORMATS = tuple(ENCODERS)


class ReportBodies:
    """The bodies of the latest report asked for, encoded on first use.

    `encodings` counts the encodings made per format (what the tests and a
    curious admin can look at: one per report and format)."""

    def __init__(
        self, encoders: Mapping[str, Callable[[Report], bytes]] = ENCODERS
    ) -> None:
        self._encoders = encoders
        self._report: Report | None = None
        self._bodies: dict[str, bytes] = {}
        self.encodings: collections.Counter[str] = collections.Counter()

    def body(self, report: Report, output: str) -> bytes:
        """`report` in format `output` (a key of the encoders)."""
        # Identity, not equality: the cache hands out the same object until
        # the next run, and comparing reports field by field would cost what
        # encoding does.
        if report is not self._report:
            self._report = report
            self._bodies = {}
        body = self._bodies.get(output)
        if body is None:
            body = self._encoders[output](report)
            self._bodies[output] = body
            self.encodings[output] += 1
        return body
