"""Hypothesis profiles for every property test of the suite.

`HYPOTHESIS_PROFILE=ci` (what CI should set) runs 10,000 examples per
property; the default, `dev`, runs 200 for a quick local run. Tests that pin
their own `@settings` keep them.
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
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
