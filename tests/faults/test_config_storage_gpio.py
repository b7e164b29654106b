"""Fault matrix: a broken config on reload, a corrupt session log, a chattering grip sensor.

(docs/faults.md)
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import time
from pathlib import Path

import pytest

from bench.rig import STANDSTILL_KMH, Rig, poll_until
from firmware_bridge.wire.messages import EStop, Stop
from tests.faults.conftest import Observations
from tests.faults.support import fault_code, fault_options, hold_and_watch, measure_stop

pytestmark = pytest.mark.slow

DB_FILE = "sessions.sqlite3"  # training.db_file default
CHATTER_HZ = 50
CHATTER_MAX_S = 3.0


async def test_sighup_with_broken_config_keeps_running_on_the_old_one(
    observations: Observations,
) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(1.5)
        before = await rig.status()
        good = rig.config_path.read_text()
        # A YAML syntax error in the stage table, and an unsafe value: neither may take effect.
        broken = good.replace("max_kmh: 2.0", "max_kmh: [9.0", 1)
        assert broken != good
        rig.config_path.write_text(broken)
        t0 = time.monotonic_ns()
        rig.service.signal(signal.SIGHUP)
        await poll_until(
            lambda: rig.service.kinds["config_rejected"] > 0,
            timeout_s=10,
            what="a config_rejected event",
        )
        rejected_ms = (time.monotonic_ns() - t0) / 1e6
        peak = await hold_and_watch(rig, 1.0)
        after = await rig.status()
        assert rig.service.returncode is None
        assert after["state"] == "running"
        assert after["fault"] is None
        assert after["stage_max_kmh"] == before["stage_max_kmh"] == 2.0
        assert peak <= 1.5 + 0.1
        assert rig.service.log_has(str(rig.config_path))
        # The old limits are still enforced: a target above them is clamped to 2.0.
        await rig.panel.ok("target 9")
        state = await rig.wait_status(
            lambda s: s["target_kmh"] != 1.5, timeout_s=5, what="the new target"
        )
        assert state["target_kmh"] == 2.0
        observations.record(
            "test_sighup_with_broken_config_keeps_running_on_the_old_one",
            config_rejected_after_ms=round(rejected_ms),
            belt_peak_kmh=round(peak, 2),
            target_after_raise_kmh=state["target_kmh"],
        )


def _corrupt_db(state_dir: Path) -> None:
    rng = random.Random(20)  # noqa: S311 - reproducible garbage, not cryptography
    (state_dir / DB_FILE).write_bytes(rng.randbytes(16384))


async def test_corrupt_session_database_runs_reports_and_leaves_the_file_alone(
    observations: Observations,
) -> None:
    async with Rig(fault_options(training=True, prepare=_corrupt_db)) as rig:
        db = rig.workdir / "state" / DB_FILE
        digest = hashlib.sha256(db.read_bytes()).hexdigest()
        await poll_until(
            lambda: rig.service.kinds["storage_error"] > 0,
            timeout_s=10,
            what="a storage_error event",
        )
        await rig.start_belt(1.0)
        await rig.panel.ok("press stop")
        await rig.wait_status(lambda s: s["state"] == "idle", timeout_s=10, what="idle")
        assert await rig.service.stop() == 0, rig.service.log()
        after = hashlib.sha256(db.read_bytes()).hexdigest()
        assert after == digest, "the corrupt session log was modified"
        line = next(ln for ln in rig.service.lines if "storage_error" in ln)
        assert str(db) in line or DB_FILE in line, line
        observations.record(
            "test_corrupt_session_database_runs_reports_and_leaves_the_file_alone",
            storage_errors=rig.service.kinds["storage_error"],
            first_report=line.split("storage_error: ", 1)[-1][:200],
            file_unchanged=after == digest,
        )


async def test_grip_chattering_at_50hz_stops_the_belt_and_latches(
    observations: Observations,
) -> None:
    async with Rig(fault_options()) as rig:
        await rig.start_belt(1.0)
        watch = rig.watch_belt()
        t0 = time.monotonic_ns()
        half_period_s = 1.0 / CHATTER_HZ / 2
        edges = 0
        stop_frame = None
        deadline = time.monotonic() + CHATTER_MAX_S
        held = True
        while time.monotonic() < deadline:
            held = not held
            await rig.panel.ok("grip both" if held else "grip none")
            edges += 1
            stop_frame = rig.wire.first_since((Stop, EStop), t0)
            if stop_frame is not None:
                break
            await asyncio.sleep(half_period_s)  # the chatter's own rhythm
        await rig.panel.ok("grip both")  # a steady hand again: must not restart anything
        assert stop_frame is not None, f"no STOP after {edges} grip edges at {CHATTER_HZ} Hz"
        code = await fault_code(rig)
        assert code in ("grip_lost", "grip_sensor"), code
        stop = await measure_stop(rig, watch, t0, 1.0)
        await watch.stop()
        peak = await hold_and_watch(rig, 1.0)
        assert peak <= STANDSTILL_KMH
        state = await rig.status()
        assert state["state"] == "faulted"
        observations.record(
            "test_grip_chattering_at_50hz_stops_the_belt_and_latches",
            **stop.__dict__,
            fault=code,
            edges_until_stop=edges,
            stop_frame_after_ms=round((stop_frame.t_ns - t0) / 1e6),
            gpio_chatter_events=rig.service.kinds["gpio_chatter"],
            warnings=state["warnings"],
        )
