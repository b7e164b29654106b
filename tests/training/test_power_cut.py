"""A power cut mid-session (SIGKILL): the session survives up to its last checkpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from controller.rules.model import Event
from controller.training.config import TrainingConfig
from controller.training.program import TrainingProgram
from controller.training.sessions import EndReason, SessionStatus
from controller.training.store import SessionStore
from tests.training.helpers import STAGES

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_S = 1.0  # what the child configures
TICK_S = 0.02


def parse(line: str) -> tuple[float, float]:
    moving_s, distance_m = line.split()
    return float(moving_s), float(distance_m)


def walk_until_killed(path: Path, *, after_moving_s: float) -> tuple[float, float]:
    """Run the child, SIGKILL it once it reports ``after_moving_s``; return what it had done."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.training.power_cut_child", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    reported: list[tuple[float, float]] = []
    try:
        # walk for a few seconds (several checkpoints), then cut the power at an odd moment
        for line in child.stdout:
            reported.append(parse(line))
            if reported[-1][0] >= after_moving_s:
                break
        else:
            pytest.fail(f"child ended early: {child.stderr.read()}")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        # everything the child printed before it died (it may be ahead of what we read)
        reported.extend(parse(line) for line in child.stdout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return reported[-1]


async def reopen(path: Path) -> list[Event]:
    """Start the program again on the log, as the service would after the power returns."""
    program = TrainingProgram(
        TrainingConfig(checkpoint_s=CHECKPOINT_S),
        STAGES,
        treadmill_id="tm-power",
        db_path=path,
    )
    events = await program.open()
    await program.close()
    return events


@pytest.mark.slow
def test_sigkill_mid_session_loses_at_most_one_checkpoint_interval(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    # walk for a few seconds (several checkpoints), then cut the power at an odd moment
    done_moving_s, done_distance_m = walk_until_killed(path, after_moving_s=3.37)
    events = asyncio.run(reopen(path))
    (interrupted,) = [e for e in events if e.kind == "session_interrupted"]
    store = SessionStore.open(path)
    (session,) = store.sessions()
    store.close()
    assert interrupted.details["session_id"] == session.session_id
    assert session.status is SessionStatus.INTERRUPTED
    assert session.end_reason is EndReason.POWER_LOSS
    assert session.client_id == "pc1"
    lost_s = done_moving_s - session.moving_s
    # never more than was done (one tick may have run after the last line was printed) ...
    assert lost_s >= -TICK_S - 1e-6
    # ... and at most one checkpoint interval lost
    assert lost_s <= CHECKPOINT_S, f"lost {lost_s:.3f} s of {done_moving_s:.3f} s"
    assert done_distance_m - session.distance_m <= CHECKPOINT_S * 2.0 / 3.6 + 1e-6
    assert session.distance_m == pytest.approx(session.moving_s * 2.0 / 3.6, rel=1e-6)
