"""A rig for key-relay (monitor) mode: no firmware, the Pi's belt sensor is the only reading.

The belt is whatever ``belt_kmh`` says (the person drives it at the treadmill's console);
``sensor_missing`` leaves the reading out altogether.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.rules.model import (
    BeltSensorReading,
    Button,
    ChannelConfig,
    Decision,
    Inputs,
    KeyRelayConfig,
    LocalCommand,
    Mode,
    RemoteCommand,
    SafetyConfig,
    SelectStage,
)
from tests.core.support import Rig, make_config

RELAY = KeyRelayConfig()
CONFIG = make_config(second_channel=ChannelConfig(), key_relay=RELAY, machine_max_kmh=8.0)


@dataclass
class RelayRig(Rig):
    """No firmware in this mode: the Pi's belt sensor is the only reading."""

    belt_kmh: float = 0.0
    sensor_missing: bool = False

    def inputs(
        self, local: tuple[LocalCommand, ...] = (), remote: tuple[RemoteCommand, ...] = ()
    ) -> Inputs:
        return Inputs(
            grip_left=self.grip[0],
            grip_right=self.grip[1],
            estop_pressed=self.estop,
            safety_key_present=self.key,
            firmware=None,
            local=local,
            remote=remote,
            stage_cap=self.stage_cap,
            belt_sensor=None if self.sensor_missing else BeltSensorReading(self.belt_kmh, 0, None),
        )


def idle(stage_number: int = 1, config: SafetyConfig = CONFIG) -> RelayRig:
    rig = RelayRig(config=config)
    decision = rig.tick()
    assert decision.state.mode is Mode.IDLE, decision.events
    assert not decision.key_relay
    if stage_number != 1:
        rig.tick(SelectStage(stage_number))
    assert rig.core.stage == stage_number
    return rig


def armed(stage_number: int = 1, config: SafetyConfig = CONFIG) -> RelayRig:
    """START pressed: the relay is closed, the belt not yet started at the console."""
    rig = idle(stage_number, config)
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.RUNNING, decision.events
    assert decision.key_relay
    return rig


def walking(
    speed_kmh: float = 1.5, stage_number: int = 1, config: SafetyConfig = CONFIG
) -> RelayRig:
    rig = armed(stage_number, config)
    rig.belt_kmh = speed_kmh  # the person started the belt at the console
    decision = rig.tick()
    assert decision.key_relay
    assert decision.state.relay_motion_seen
    return rig


def relay_open(decision: Decision) -> bool:
    return not decision.key_relay
