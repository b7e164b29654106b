"""Opens the service's parts from its config: the simulator when ``serial.port`` asks for it, the
belt sensor, the key relay, the firmware bridge and the training program.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.adapters.gpio.beltsensor import BeltSensor
from controller.adapters.gpio.inputs import TimedMockPin
from controller.adapters.gpio.keyrelay import KeyRelayOutput
from controller.rules.model import SafetyConfig
from controller.runtime.wiring import firmware_limits
from controller.settings.schema import AppConfig
from controller.training.program import TrainingProgram
from firmware_bridge.port.bridge import FirmwareBridge

SIM_PORT = "sim://"


async def start_simulator(
    config: AppConfig, simulator: Any | None, stack: contextlib.AsyncExitStack, *, relay_mode: bool
) -> tuple[Any | None, str]:
    """The simulator the config asks for (``serial.port: sim://``), entered on ``stack``, and
    the port to open: ``(None, serial.port)`` for a real treadmill."""
    port = config.serial.port
    if port != SIM_PORT:
        return simulator, port
    if relay_mode:
        if simulator is None:
            from firmware_bridge.sim.console import ConsoleSimulator  # noqa: PLC0415

            simulator = ConsoleSimulator()
        await stack.enter_async_context(simulator)
        return simulator, port
    if simulator is None:
        # A stable link, like /dev/serial/by-id: after a simulated replug the bridge
        # reopens this simulator's new pty, never a recycled /dev/pts/N of another.
        # The simulator is a developer tool: loaded only when the config asks for it.
        from firmware_bridge.sim.pty import PtySimulator  # noqa: PLC0415

        link_dir = Path(tempfile.mkdtemp(prefix="treadmill-sim-"))
        stack.callback(shutil.rmtree, link_dir, ignore_errors=True)
        simulator = PtySimulator(link_path=link_dir / "ttySIM0")
    await stack.enter_async_context(simulator)
    return simulator, str(simulator.port)


def open_bridge(
    config: AppConfig,
    port: str,
    clock_ms: Callable[[], int],
    simulator: Any | None,
    *,
    rng: random.Random | None = None,
) -> FirmwareBridge:
    """The firmware bridge on ``port`` (not started: its ``run()`` is a service task);
    ``rng`` draws its reconnect jitter (None: unseeded; a scenario seeds it to replay)."""
    return FirmwareBridge(
        port,
        baud=config.serial.baud,
        limits=firmware_limits(config),
        clock_ms=clock_ms,
        handshake_timeout_ms=config.serial.handshake_timeout_ms,
        link_timeout_ms=config.serial.link_timeout_ms,
        # an in-memory simulator (firmware_bridge.sim.memory) brings its own link
        open_port=getattr(simulator, "open_connection", None),
        rng=rng,
    )


def open_key_relay(
    config: AppConfig, factory: Any, simulator: Any | None, stack: contextlib.AsyncExitStack
) -> KeyRelayOutput:
    """Key-relay mode: the relay output, wired to an in-process console simulator."""
    section = config.drive.key_relay
    if section is None:  # refused by the config loader
        raise RuntimeError("drive.mode is key_relay but drive.key_relay is missing")
    relay = KeyRelayOutput(section.pin, pin_factory=factory)
    stack.callback(relay.close)
    toggled = getattr(simulator, "relay_toggled", None)
    if toggled is not None:
        relay.on_toggle = toggled
    return relay


def open_belt_sensor(
    config: AppConfig, factory: Any, simulator: Any | None, stack: contextlib.AsyncExitStack
) -> BeltSensor | None:
    """The Pi's own belt sensor, when configured (second speed channel, SR-CHAN-*).

    With the in-process simulator and mock pins, the simulated sensor's pulses drive the
    sensor's mock pin, stamped with the time each pulse happened.
    """
    section = config.belt_sensor
    if section is None:
        return None
    sensor = BeltSensor(
        section.pin,
        pin_factory=factory,
        active_high=section.active == "high",
        pull=section.pull,
        distance_per_pulse_mm=section.distance_per_pulse_mm,
        debounce_ms=section.debounce_ms,
        stale_ms=section.stale_ms,
    )
    stack.callback(sensor.close)
    pin = sensor.pin
    if simulator is not None and isinstance(pin, TimedMockPin):
        active_high = section.active == "high"

        def drive(pulses_ms: list[float]) -> None:
            for pulse_ms in pulses_ms:
                at_s = pulse_ms / 1000.0
                pin.drive_at(active_high, at_s)
                pin.drive_at(not active_high, at_s + 0.0005)  # a 0.5 ms pulse

        simulator.attach_belt_sensor(section.distance_per_pulse_mm, drive)
    return sensor


def open_training(config: AppConfig, safety: SafetyConfig) -> TrainingProgram:
    """The training program (``training.enabled``); its session log opens with ``open()``."""
    return TrainingProgram(
        config.training,
        safety.stages,
        treadmill_id=config.treadmill.id,
        db_path=Path(config.state_dir) / config.training.db_file,
        standstill_kmh=safety.standstill_kmh,
    )
