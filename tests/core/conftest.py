"""Hypothesis profile for the mutation run of the core tests.

``HYPOTHESIS_PROFILE=mutation`` (set by .ci/mutation.sh) makes every property test
deterministic, so a mutant is killed or survives for the same reason on every run. Any
other value is left to whoever registered it.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
if os.environ.get("HYPOTHESIS_PROFILE") == "mutation":
    settings.load_profile("mutation")
