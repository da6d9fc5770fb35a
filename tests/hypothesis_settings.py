"""Example counts for property tests.

`HYPOTHESIS_PROFILE=ci` (set by .ci/test) runs the parsers of remote input
(server names, well-known bodies, key answers, X-Matrix headers, DNS/SRV
answers) with 10,000 examples each, and every other property with the `ci`
profile's 500. Locally (`dev`) everything runs 200 for a quick loop.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

IN_CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
REMOTE_INPUT_EXAMPLES = 10_000 if IN_CI else 200

REMOTE_INPUT_SETTINGS = settings(
    max_examples=REMOTE_INPUT_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
