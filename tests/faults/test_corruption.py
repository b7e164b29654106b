"""Fault matrix: corrupted bytes on the serial line for a minute (docs/faults.md).

The rows run in the background (tests/faults/corruption.py) from the start of the matrix;
these tests collect and check their results.

* 1 %: about one frame in six is corrupt in each direction. The link layer drops them (CRC)
  and the next frame 20 ms later replaces them: the belt **runs on** at its speed, with no
  fault, for the whole minute.
* 10 %: most frames are corrupt. The belt must end safe: here the firmware counts more than
  20 corrupt frames in a second and stops the belt itself (BAD_FRAME_FLOOD), the controller
  latches ``firmware_fault``. Never above the stage maximum on the way.
"""

from __future__ import annotations

import pytest

from tests.faults.conftest import BACKGROUND_MARK, Observations
from tests.faults.corruption import CORRUPTION_S, BackgroundRows
from tests.faults.support import STAGE1_MAX_KMH

pytestmark = [pytest.mark.slow, getattr(pytest.mark, BACKGROUND_MARK)]

RESULT_TIMEOUT_S = CORRUPTION_S + 60
NOISE_KMH = 0.05  # the simulated belt never runs above its drive; this is float slack only


def test_corrupt_bytes_1pct_for_a_minute_runs_on(
    background_rows: BackgroundRows, observations: Observations
) -> None:
    row = background_rows.result("corrupt_1pct", RESULT_TIMEOUT_S)
    observations.record("test_corrupt_bytes_1pct_for_a_minute_runs_on", **row)
    assert row["link"]["crc_errors"] > 0, row  # the fault was really there
    assert row["modes_seen"] == ["running"], row
    assert row["final_state"] == "running", row
    assert row["final_fault"] is None, row
    assert row["peak_kmh"] <= STAGE1_MAX_KMH + NOISE_KMH, row
    assert row["belt_end_kmh"] >= STAGE1_MAX_KMH - 0.2, row


def test_corrupt_bytes_10pct_for_a_minute_ends_safe(
    background_rows: BackgroundRows, observations: Observations
) -> None:
    row = background_rows.result("corrupt_10pct", RESULT_TIMEOUT_S)
    observations.record("test_corrupt_bytes_10pct_for_a_minute_ends_safe", **row)
    assert row["link"]["crc_errors"] > 0, row
    assert row["peak_kmh"] <= STAGE1_MAX_KMH + NOISE_KMH, row
    if row["final_state"] == "running":
        # Running on is acceptable only within the limits and without any fault.
        assert row["final_fault"] is None, row
        assert row["belt_end_kmh"] <= STAGE1_MAX_KMH, row
    else:
        assert row["final_state"] == "faulted", row
        assert row["final_fault"] is not None, row
        assert row["at_rest_after_s"] is not None, row  # and the belt stayed at rest
        assert row["belt_end_kmh"] <= 0.1, row
