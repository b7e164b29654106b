"""Hypothesis profile and the quick pass of the mutation run of the core tests.

``HYPOTHESIS_PROFILE=mutation`` (set by .ci/mutation.sh) makes every property test
deterministic, so a mutant is killed or survives for the same reason on every run. Any
other value is left to whoever registered it.

``MUTATION_QUICK=1`` (the first pass of .ci/mutation.sh) also caps every property test at
:data:`QUICK_MAX_EXAMPLES` examples and lets the exhaustive tests that take tens of seconds
check a stride of their cases (``support.MUTATION_QUICK``). Fewer cases can only let a mutant
survive, never kill one that the full tests would not: the script re-runs every survivor of
the quick pass against the full tests, so the final verdict is the full suite's.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.core.support import MUTATION_QUICK

settings.register_profile("mutation", derandomize=True, database=None)
if os.environ.get("HYPOTHESIS_PROFILE") == "mutation":
    settings.load_profile("mutation")

QUICK_MAX_EXAMPLES = 20

_SETTINGS_ATTRIBUTE = "_hypothesis_internal_use_settings"


def _capped(current: settings) -> settings:
    return settings(current, max_examples=min(current.max_examples, QUICK_MAX_EXAMPLES))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not MUTATION_QUICK:
        return
    for item in items:
        test = getattr(item, "obj", None)
        # @given tests: the attribute @settings writes and the test reads on every call
        # (Hypothesis has no public way to lower an explicit max_examples from outside).
        current = getattr(test, _SETTINGS_ATTRIBUTE, None)
        if isinstance(current, settings):
            setattr(test, _SETTINGS_ATTRIBUTE, _capped(current))
        # Rule-based state machines: the TestCase class carries its settings.
        cls = getattr(item, "cls", None)
        machine_settings = getattr(cls, "settings", None)
        if cls is not None and isinstance(machine_settings, settings):
            cls.settings = _capped(machine_settings)
