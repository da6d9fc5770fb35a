"""Hostile http behaviour against the engine: each scenario of
`hostile_scenarios.SCENARIOS` with family "http" ends within its time bound,
with the expected check status and `details.reason`, bounded memory, and no
error logged (see hostile_scenarios for what is measured)."""

from __future__ import annotations

import pytest

from .hostile_scenarios import HostileTestCase, add_tests

pytestmark = pytest.mark.integration


@add_tests
class HostileHttpTest(HostileTestCase):
    family = "http"
