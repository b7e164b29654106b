"""Gathers what the core sees in one tick: the panel, the queued local and remote commands, the
firmware's latest STATUS, the link's health, the belt sensor and the trainer's action.
"""

from __future__ import annotations

from collections import deque

from controller.adapters.gpio.beltsensor import BeltSensor
from controller.adapters.gpio.inputs import PanelReading
from controller.rules.model import (
    Button,
    Event,
    FirmwareStatus,
    Inputs,
    LinkHealth,
    LocalCommand,
    Press,
    RemoteCommand,
    RemoteStop,
    RequestStop,
)
from controller.runtime.wiring import firmware_status
from controller.training.config import TrainerActionConfig
from firmware_bridge.port.bridge import FirmwareBridge, StatusSnapshot

MAX_PENDING_REMOTE = 32


def link_health(bridge: FirmwareBridge) -> LinkHealth:
    """The bridge's view of the link, for the core's link rules (SR-LINK-*)."""
    received, missed = bridge.frame_counts()
    return LinkHealth(
        up=bridge.connected,
        session=bridge.session,
        frames_received=received,
        frames_missed=missed,
        boot_id=bridge.boot_id,
    )


class InputGatherer:
    """The commands waiting for the next tick and the conversions the tick reuses.

    ``submit_local`` and ``submit_remote`` queue commands between ticks; a remote stop is a
    flag, never dropped whatever the queue holds. ``gather`` takes them all for one tick.
    """

    def __init__(self) -> None:
        self.local: list[LocalCommand] = []
        self.remote: deque[RemoteCommand] = deque()
        self.remote_stop = False
        self._snapshot: StatusSnapshot | None = None  # the STATUS last converted ...
        self._status: FirmwareStatus | None = None  # ... and what it converted to

    def submit_remote(self, command: RemoteCommand) -> Event | None:
        """Queue a remote command; when ``MAX_PENDING_REMOTE`` are waiting it is dropped and
        the ``command_rejected`` event saying so is returned."""
        if len(self.remote) >= MAX_PENDING_REMOTE:
            return Event(
                "command_rejected",
                f"remote command dropped: more than {MAX_PENDING_REMOTE} commands "
                "waiting for one control tick",
                {"command": type(command).__name__, "reason": "flood"},
            )
        self.remote.append(command)
        return None

    def gather(
        self,
        reading: PanelReading,
        *,
        bridge: FirmwareBridge | None,
        belt_sensor: BeltSensor | None,
        stage_cap: int,
        shutdown_stop: RequestStop | None,
    ) -> Inputs:
        """The core's inputs for this tick; the queues are empty afterwards."""
        local: tuple[LocalCommand, ...] = ()
        if reading.presses or self.local or shutdown_stop is not None:  # most ticks: none
            pressed: list[LocalCommand] = [Press(b) for b in reading.presses]
            pressed.extend(self.local)
            self.local.clear()
            if shutdown_stop is not None:
                pressed.append(shutdown_stop)
            local = tuple(pressed)
        remote: tuple[RemoteCommand, ...] = ()
        if self.remote_stop or self.remote:
            received: list[RemoteCommand] = [RemoteStop()] if self.remote_stop else []
            self.remote_stop = False
            received.extend(self.remote)
            self.remote.clear()
            remote = tuple(received)
        return Inputs(
            grip_left=reading.grip_left,
            grip_right=reading.grip_right,
            estop_pressed=reading.estop_pressed,
            safety_key_present=reading.safety_key_present,
            firmware=self.firmware_input(bridge.latest()) if bridge is not None else None,
            local=local,
            remote=remote,
            stage_cap=stage_cap,
            belt_sensor=belt_sensor.read() if belt_sensor is not None else None,
            link=link_health(bridge) if bridge is not None else None,
        )

    def firmware_input(self, snapshot: StatusSnapshot | None) -> FirmwareStatus | None:
        """The core's view of the latest STATUS, converted once per STATUS frame."""
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._status = firmware_status(snapshot)
        return self._status


def no_training_event() -> Event:
    """A client id arrived but the training program is off."""
    return Event(
        "command_rejected",
        "client ids need the training program (training.enabled: true)",
        {"command": "client", "reason": "training disabled"},
    )


class TrainerAction:
    """The local trainer action configured in ``training.trainer`` (never remote).

    ``trainer_key``: the trainer key switch is on and STAGE_UP is pressed.
    ``buttons``: every configured button held together for ``hold_ms``; fires once per hold.
    """

    def __init__(self) -> None:
        self._since_ms: int | None = None
        self._fired = False

    def check(self, trainer: TrainerActionConfig, reading: PanelReading, now_ms: int) -> bool:
        """True on the tick the trainer's action happens."""
        if trainer.input == "trainer_key":
            return reading.trainer_key and Button.STAGE_UP in reading.presses
        combo = {Button(name) for name in trainer.buttons}
        if not combo <= reading.held:
            self._since_ms = None
            self._fired = False
            return False
        if self._since_ms is None:
            self._since_ms = now_ms
        if not self._fired and now_ms - self._since_ms >= trainer.hold_ms:
            self._fired = True
            return True
        return False
