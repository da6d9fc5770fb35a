"""Loads the suite's hypothesis profile (tests/hypothesis_settings.py) before
any test module is collected."""

from __future__ import annotations

import tests.hypothesis_settings  # noqa: F401  (registers and loads the profile)
