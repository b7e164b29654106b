"""How the service puts the core's motion command on the wire (``runtime/motion.py``).

SR-STOP-6: a STOP or ESTOP goes out every control tick while the firmware's latest STATUS
still says RUNNING, so on a lossy link one gets through within a few
ticks; once the firmware reports that it is acting on it, once per ``STOP_REPEAT_MS``.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from controller.rules.model import EStop, FirmwareState, MotionCommand, SetSpeed, Stop
from controller.runtime.motion import STOP_REPEAT_MS, MotionSender, firmware_running
from firmware_bridge.port.bridge import FirmwareBridge
from tests.core.support import status

TICK_MS = 20
RUNNING = status(1000, state=FirmwareState.RUNNING)
STOPPING = status(1000, state=FirmwareState.STOPPING)


class RecordingBridge:
    """Records what the sender hands to the bridge."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float | None]] = []

    def set_speed(self, speed_kmh: float, accel_kmh_s: float, lease_ms: int) -> bool:
        self.sent.append(("set_speed", speed_kmh))
        return True

    def stop(self, decel_kmh_s: float) -> bool:
        self.sent.append(("stop", decel_kmh_s))
        return True

    def estop(self) -> bool:
        self.sent.append(("estop", None))
        return True


def _send_for(
    motion: MotionCommand, *, running: bool, duration_ms: int
) -> list[tuple[str, float | None]]:
    recorder = RecordingBridge()
    sender = MotionSender()
    bridge = cast(FirmwareBridge, cast(Any, recorder))
    for now_ms in range(1000, 1000 + duration_ms, TICK_MS):
        sender.carry_out(bridge, motion, now_ms, RUNNING if running else STOPPING)
    return recorder.sent


@pytest.mark.parametrize("motion", [Stop(1.0), EStop()], ids=["stop", "estop"])
def test_SR_STOP_6_a_stop_goes_out_every_tick_while_the_firmware_says_running(
    motion: MotionCommand,
) -> None:
    sent = _send_for(motion, running=True, duration_ms=1000)
    assert len(sent) == 1000 // TICK_MS
    assert {name for name, _ in sent} == {"stop" if isinstance(motion, Stop) else "estop"}


@pytest.mark.parametrize("motion", [Stop(1.0), EStop()], ids=["stop", "estop"])
def test_SR_STOP_6_a_stop_the_firmware_acts_on_is_repeated_every_250_ms(
    motion: MotionCommand,
) -> None:
    sent = _send_for(motion, running=False, duration_ms=1000)
    # at 1000, 1260, 1520, 1780 ms: the first tick at least STOP_REPEAT_MS after the last
    assert STOP_REPEAT_MS == 250
    assert len(sent) == 4


def test_SR_STOP_6_a_changed_stop_goes_out_at_once() -> None:
    recorder = RecordingBridge()
    sender = MotionSender()
    bridge = cast(FirmwareBridge, cast(Any, recorder))
    sender.carry_out(bridge, Stop(1.0), 1000, STOPPING)
    sender.carry_out(bridge, EStop(), 1020, STOPPING)
    sender.carry_out(bridge, EStop(), 1040, STOPPING)
    assert recorder.sent == [("stop", 1.0), ("estop", None)]


def test_set_speed_goes_out_every_tick_whatever_the_firmware_says() -> None:
    for running in (True, False):
        sent = _send_for(SetSpeed(2.0, 0.5, 300), running=running, duration_ms=200)
        assert sent == [("set_speed", 2.0)] * 10


@pytest.mark.parametrize("state", list(FirmwareState))
def test_SR_STOP_6_only_a_firmware_reporting_running_may_not_have_the_stop(
    state: FirmwareState,
) -> None:
    assert firmware_running(status(1000, state=state)) is (state is FirmwareState.RUNNING)
    assert firmware_running(None) is False  # no STATUS yet: never started by the service
