"""The core's verdicts in every Decision: belt at rest and firmware status fresh (SR-STOP-5)."""

from __future__ import annotations

from dataclasses import replace

from controller.rules.core import decide
from controller.rules.model import Inputs, Mode
from tests.core.support import DEFAULT_CONFIG, faulted_rig, idle_rig, running_rig, stopping_rig


def test_SR_STOP_5_idle_with_the_belt_standing_still_is_at_rest() -> None:
    decision = idle_rig().tick()
    assert decision.belt_at_rest
    assert decision.firmware_fresh


def test_SR_STOP_5_a_creeping_belt_is_not_at_rest_while_the_sensor_reads_zero() -> None:
    rig = idle_rig()
    rig.measured_kmh = 0.0
    rig.fw_commanded_kmh = DEFAULT_CONFIG.standstill_kmh + 0.01  # still ramping down
    assert not rig.tick().belt_at_rest
    rig.fw_commanded_kmh = DEFAULT_CONFIG.standstill_kmh
    assert rig.tick().belt_at_rest


def test_SR_STOP_5_only_idle_and_faulted_count_as_at_rest() -> None:
    running = running_rig()
    running.measured_kmh = 0.0
    assert running.tick().state.mode is Mode.RUNNING
    assert not running.history[-1].belt_at_rest
    stopping = stopping_rig()
    assert stopping.core.mode is Mode.STOPPING
    assert not stopping.history[-1].belt_at_rest
    faulted = faulted_rig(running=False)
    assert faulted.core.mode is Mode.FAULTED
    assert faulted.tick().belt_at_rest


def test_SR_STOP_5_without_a_fresh_status_the_belt_is_not_known_to_be_at_rest() -> None:
    rig = idle_rig()
    rig.link = "stale"
    decision = rig.tick()
    assert not decision.firmware_fresh
    assert not decision.belt_at_rest
    rig.link = "none"
    decision = rig.tick()
    assert not decision.firmware_fresh
    assert not decision.belt_at_rest


def test_SR_STOP_5_a_status_exactly_stale_ms_old_is_fresh() -> None:
    rig = idle_rig()
    firmware = rig.firmware()
    assert firmware is not None
    inputs = Inputs(True, True, False, True, replace(firmware, received_ms=rig.now_ms))
    on_time = decide(rig.core, inputs, DEFAULT_CONFIG, rig.now_ms + DEFAULT_CONFIG.stale_ms)
    assert on_time.firmware_fresh
    late = decide(rig.core, inputs, DEFAULT_CONFIG, rig.now_ms + DEFAULT_CONFIG.stale_ms + 1)
    assert not late.firmware_fresh
