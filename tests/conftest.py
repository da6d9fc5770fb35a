"""Hypothesis profiles for every property test of the suite.

`HYPOTHESIS_PROFILE=ci` (what .ci/test sets) runs 500 examples per property;
the parsers of remote input pin 10,000 in CI (tests/hypothesis_settings.py).
The default, `dev`, runs 200 for a quick local run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
