"""Hypothesis profiles for the core tests.

``HYPOTHESIS_PROFILE=mutation`` (set by .ci/mutation.sh) makes every property test
deterministic, so a mutant is killed or survives for the same reason on every run.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
