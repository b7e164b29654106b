"""Hypothesis settings for the whole suite: no per-example deadline.

Hypothesis fails an example that takes longer than its deadline (200 ms by default), and
then reports "Unreliable test timings" when the re-run is fast. On a busy CI machine the
test process can be descheduled for longer than that in the middle of a microsecond-long
example, so a deadline measures the machine's load, not the code: speed is the business
of the bench (bench/), never of a timed assertion in the suite. For the same reason the
``too_slow`` health check (which times data generation) is off. Every other health check
and every assertion stays as it is.

The profile is loaded before any test module is imported, so it is the parent of every
``@settings(...)`` in the suite and of the ``mutation`` profile (tests/core/conftest.py).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")
