"""Child process for the power-cut test: drives a TrainingProgram in real time until killed.

Run as ``python -m tests.training.power_cut_child DB_PATH``. It assigns client ``pc1``, walks
at 2.0 km/h with 50 Hz ticks, and after every tick prints ``moving_s distance_m`` (what it has
done so far) on stdout, flushed, so that the parent knows what a kill cuts off.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from controller.training.config import TrainingConfig
from controller.training.program import TrainingProgram
from tests.training.helpers import STAGES, core

TICK_S = 0.02


async def main(db_path: Path) -> None:
    program = TrainingProgram(
        TrainingConfig(checkpoint_s=1.0, session_end_rest_s=60.0),
        STAGES,
        treadmill_id="tm-power",
        db_path=db_path,
    )
    opened = await program.open()
    if opened:
        raise SystemExit(f"unexpected events at open: {opened}")
    program.assign_client("pc1", belt_at_rest=True, source="console")
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as group:
        group.create_task(program.run_writer(), name="training-writer")
        start_s = loop.time()
        walking = core(kmh=2.0)
        tick = 0
        while True:  # runs until the parent kills the process
            tick += 1
            await asyncio.sleep(max(0.0, start_s + tick * TICK_S - loop.time()))
            program.on_tick(
                now_ms=round(loop.time() * 1000),
                utc=datetime.now(UTC),
                core=walking,
                measured_kmh=2.0,
                belt_at_rest=False,
                events=(),
                trainer_action=False,
            )
            progress = program.progress()
            if progress is not None:
                sys.stdout.write(f"{progress.moving_s:.3f} {progress.distance_m:.3f}\n")
                sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
