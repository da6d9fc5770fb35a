"""The one place that registers and loads the suite's hypothesis profiles.

`HYPOTHESIS_PROFILE=ci` (set by .ci/test) runs every property with 500
examples, and the parsers of remote input (server names, well-known bodies,
key answers, X-Matrix headers, DNS/SRV answers) with 10,000 each. The default,
`dev`, runs 200 of each for a quick local loop.

tests/conftest.py imports this module, so the profile is loaded before any
test module is collected; test modules use the settings objects below.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Example counts per profile: (every property, the parsers of remote input).
EXAMPLES_BY_PROFILE = {"dev": (200, 200), "ci": (500, 10_000)}

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
if PROFILE not in EXAMPLES_BY_PROFILE:
    raise ValueError(
        f"HYPOTHESIS_PROFILE={PROFILE!r}: use one of {sorted(EXAMPLES_BY_PROFILE)}"
    )

for _name, (_examples, _) in EXAMPLES_BY_PROFILE.items():
    settings.register_profile(
        _name,
        max_examples=_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
settings.load_profile(PROFILE)

# The loaded profile, for tests that name their settings explicitly.
PROPERTY_SETTINGS = settings.get_profile(PROFILE)
REMOTE_INPUT_EXAMPLES = EXAMPLES_BY_PROFILE[PROFILE][1]
REMOTE_INPUT_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=REMOTE_INPUT_EXAMPLES)
