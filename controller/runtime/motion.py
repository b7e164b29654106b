"""Carries the core's motion command to the firmware link, and the service's last-resort stops
when it goes down (SR-FAULT-4).
"""

from __future__ import annotations

import logging

from controller.rules.model import (
    EStop,
    FirmwareState,
    FirmwareStatus,
    MotionCommand,
    SetSpeed,
    Stop,
)
from firmware_bridge.port.bridge import FirmwareBridge

logger = logging.getLogger(__name__)

STOP_REPEAT_MS = 250  # a Stop/EStop is re-sent this often once the firmware is acting on it


def firmware_running(status: FirmwareStatus | None) -> bool:
    """The firmware's latest STATUS says RUNNING (fresh or not): a stop sent may not have
    reached it. With no STATUS yet the belt has never been started by this service (a start
    needs a fresh one, SR-START-2)."""
    return status is not None and status.state is FirmwareState.RUNNING


class MotionSender:
    """Writes motion commands to the bridge (``None`` before it is opened, and always in
    key-relay mode) without waiting: SET_SPEED every tick, since each one renews the
    firmware's lease (FW-3). A STOP or ESTOP (which the link acks and retransmits) goes out
    every tick while the firmware's latest STATUS still says RUNNING, so a lossy link
    carries one within a few ticks (SR-STOP-6), then once per ``STOP_REPEAT_MS`` while it
    stays the decision."""

    def __init__(self) -> None:
        self._last_sent: tuple[MotionCommand, int] | None = None

    def carry_out(
        self,
        bridge: FirmwareBridge | None,
        motion: MotionCommand,
        now_ms: int,
        firmware: FirmwareStatus | None,
    ) -> None:
        """Send ``motion`` as the core decided it at ``now_ms``; ``firmware``: the firmware's
        latest STATUS, fresh or not (None: none yet)."""
        if bridge is None:
            return
        if isinstance(motion, SetSpeed):
            # Sent every tick: each SET_SPEED renews the firmware's lease.
            bridge.set_speed(motion.speed_kmh, motion.accel_kmh_s, motion.lease_ms)
            self._last_sent = (motion, now_ms)
            return
        last = self._last_sent
        repeat_ms = 0 if firmware_running(firmware) else STOP_REPEAT_MS
        if last is not None and last[0] == motion and now_ms - last[1] < repeat_ms:
            return  # the firmware is acting on the same stop, sent moments ago
        if isinstance(motion, EStop):
            bridge.estop()
        elif isinstance(motion, Stop):
            bridge.stop(motion.decel_kmh_s)
        self._last_sent = (motion, now_ms)

    @staticmethod
    def last_resort_stop(bridge: FirmwareBridge | None, reason: str, decel_kmh_s: float) -> None:
        """The service is going down: a controlled STOP on the wire, if there is a wire.

        Not ESTOP: cutting the motor throws a person walking backwards, and a STOP (or,
        without a wire, the firmware's lease expiry) ramps the belt down at the firmware's
        controlled rate on its own, without this process (SR-FAULT-4, FW-3).
        """
        logger.critical(
            "service stopping on an error: %s; controlled STOP sent, the firmware's lease "
            "stops the belt if it does not arrive",
            reason,
        )
        if bridge is not None:
            try:
                bridge.stop(decel_kmh_s)
            except Exception:
                logger.exception("could not send STOP; the firmware lease will stop the belt")

    @staticmethod
    def emergency_stop(bridge: FirmwareBridge | None, reason: str) -> None:
        """Last resort when the belt does not stop in time: ESTOP on the wire, if any."""
        logger.critical("emergency stop: %s", reason)
        if bridge is not None:
            try:
                bridge.estop()
            except Exception:
                logger.exception("could not send ESTOP; the firmware lease will stop the belt")
