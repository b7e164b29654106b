"""Drive the mock GPIO inputs of a running service: the demo's keys, scenarios, tests.

Only available with ``gpio.pin_factory: mock``. Inputs are driven through gpiozero's own mock
pins (``drive_high``/``drive_low``), so the service reads them exactly as it reads real pins.

The optional Unix socket (``gpio.mock_socket``) speaks one command per line and answers one
line, ``ok ...`` or ``error ...``::

    grip both|left|right|none        estop pressed|released      key inserted|removed
    press start|stop|faster|slower|stage_up|stage_down|reset
    target <km/h>                    stage <n>                   trainer on|off
    client <id>|none                 mqtt <command> <payload>    status
    sim inject <fault> [<value>]     sim clear <fault>           sim key open|closed
    console start|stop|faster|slower     console target <km/h>      sim hang <ms>

``console ...`` presses the keys of the treadmill's own console and ``sim hang`` freezes the
relay output (a hung controller) in key-relay mode (``drive.mode: key_relay``), where the
simulator is the console-driven treadmill (:mod:`firmware_bridge.sim.console`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.adapters.mqtt.commands import parse_command
from controller.errors import MockPanelError
from controller.rules.model import Button, SelectStage, SetTarget
from firmware_bridge.sim.firmware import SimFault

if TYPE_CHECKING:
    from controller.runtime.service import Service

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 1024
CONSOLE_KEYS = ("start", "stop", "faster", "slower")
GRIP_CHOICES = {
    "both": (True, True),
    "left": (True, False),
    "right": (False, True),
    "none": (False, False),
}


def sim_fault(name: str) -> Any:
    """The simulator fault called ``name`` (e.g. ``runaway``, ``corrupt_bytes``)."""
    for fault in SimFault:
        if name.lower() in (fault.name.lower(), str(fault.value).lower()):
            return fault
    names = ", ".join(f.name.lower() for f in SimFault)
    raise MockPanelError(f"unknown simulator fault {name!r}: use one of {names}")


class MockPanel:
    """Drives the mock pins and local commands of one in-process :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._key_inserted = True
        self._estop_pressed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _set(self, name: str, active: bool) -> None:
        panel = self.service.panel
        if panel is None:
            raise MockPanelError("the service has not opened its GPIO inputs yet")
        if not panel.has(name):
            raise MockPanelError(f"input {name} is not configured in gpio.inputs")
        high = active == panel.spec(name).active_high
        pin = panel.pin(name)
        if high:
            pin.drive_high()
        else:
            pin.drive_low()

    def reset_inputs(self) -> None:
        """Normal console state: no hands, e-stop released, key in, buttons up."""
        self.grip("none")
        self.estop(False)
        self.safety_key(True)
        for button in Button:
            self._set(button.value, False)
        panel = self.service.panel
        if panel is not None and panel.has("trainer_key"):
            self._set("trainer_key", False)

    def hold(self, button: str, held: bool) -> None:
        """Hold a button down (or release it), for button combinations."""
        self._set(Button(button).value, held)

    def grip(self, which: str) -> None:
        if which not in GRIP_CHOICES:
            raise MockPanelError(f"grip {which!r}: use both, left, right or none")
        left, right = GRIP_CHOICES[which]
        self._set("grip_left", left)
        self._set("grip_right", right)

    def estop(self, pressed: bool) -> None:
        self._estop_pressed = pressed
        self._set("estop", pressed)
        self._sync_power_chain()

    def safety_key(self, inserted: bool) -> None:
        self._key_inserted = inserted
        self._set("safety_key", inserted)
        self._sync_power_chain()

    def _sync_power_chain(self) -> None:
        # On the real machine the key and the mushroom stop sit in series in the motor power
        # path: opening either cuts motor power without any software. The simulator models that
        # chain as one circuit.
        simulator = self.service.simulator
        if simulator is not None:
            simulator.set_safety_key(self._key_inserted and not self._estop_pressed)

    def trainer_key(self, on: bool) -> None:
        self._set("trainer_key", on)

    def press(self, button: str) -> None:
        try:
            parsed = Button(button)
        except ValueError:
            names = ", ".join(b.value for b in Button)
            raise MockPanelError(f"press {button!r}: use one of {names}") from None
        self._set(parsed.value, True)
        self._set(parsed.value, False)

    def target(self, speed_kmh: float) -> None:
        if not math.isfinite(speed_kmh) or speed_kmh < 0:
            raise MockPanelError(f"target {speed_kmh!r}: use a speed in km/h >= 0")
        self.service.submit_local(SetTarget(speed_kmh))

    def stage(self, number: int) -> None:
        self.service.submit_local(SelectStage(number))

    def client(self, client_id: str | None) -> None:
        self.service.assign_client(client_id)

    def mqtt(self, command: str, payload: bytes) -> None:
        """A remote command exactly as the MQTT publisher would hand it over."""
        config = self.service.config
        parsed = parse_command(
            command,
            payload,
            max_payload_bytes=config.mqtt.max_payload_bytes,
            max_stage=len(config.stages),
            max_speed_kmh=config.firmware.max_speed_kmh,
        )
        self.service.on_remote_command(parsed)

    def sim(self, words: list[str]) -> str:
        simulator = self.service.simulator
        if simulator is None:
            raise MockPanelError("no in-process simulator (serial.port is not sim://)")
        if len(words) >= 2 and words[0] in ("inject", "clear"):
            fault = sim_fault(words[1])
            loop = asyncio.get_running_loop()
            if words[0] == "inject":
                params: dict[str, float] = {}
                if len(words) > 2:
                    key = "accel_kmh_s" if fault is SimFault.RUNAWAY else "pct"
                    params[key] = float(words[2])
                self._background(loop.create_task(simulator.inject(fault, **params)))
                return f"injected {fault.value}"
            self._background(loop.create_task(simulator.clear(fault)))
            return f"cleared {fault.value}"
        if len(words) == 2 and words[0] == "key" and words[1] in ("open", "closed"):
            simulator.set_safety_key(words[1] == "closed")
            return f"firmware key circuit {words[1]}"
        if len(words) == 2 and words[0] == "hang":
            hang_ms = int(words[1])
            if hang_ms <= 0:
                raise MockPanelError(f"sim hang {hang_ms}: use a time in ms > 0")
            self._console_treadmill().hang_output(hang_ms)
            return f"relay output frozen for {hang_ms} ms"
        raise MockPanelError(
            "sim: use 'inject <fault> [pct]', 'clear <fault>', 'key open|closed', 'hang <ms>'"
        )

    def _console_treadmill(self) -> Any:
        """The simulated console-driven treadmill (key-relay mode), or MockPanelError."""
        simulator = self.service.simulator
        if simulator is None or not hasattr(simulator, "press"):
            raise MockPanelError(
                "no simulated console treadmill: console keys need key-relay mode "
                "(drive.mode: key_relay, serial.port: sim://), e.g. config/monitor-demo.yaml"
            )
        return simulator

    def console(self, words: list[str]) -> str:
        """A person at the treadmill's own console: ``start``, ``stop``, ``faster``,
        ``slower`` (one press), or ``target <km/h>`` (holds + or - until that speed)."""
        if len(words) == 1 and words[0] in CONSOLE_KEYS:
            self._console_treadmill().press(words[0])
            return f"console {words[0]}"
        if len(words) == 2 and words[0] == "target":
            speed_kmh = float(words[1])
            if not math.isfinite(speed_kmh) or speed_kmh < 0:
                raise MockPanelError(f"console target {words[1]!r}: use a speed in km/h >= 0")
            self._console_treadmill().set_target(speed_kmh)
            return f"console target {speed_kmh:g} km/h"
        raise MockPanelError(
            "console: use 'console start|stop|faster|slower' or 'console target <km/h>'"
        )

    def _background(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        service = self.service
        now_ms = service.now_ms()
        return service.telemetry(now_ms)

    def handle(self, line: str) -> str:
        """Carry out one text command; returns the one-line answer."""
        words = line.split()
        if not words:
            return "error empty command"
        verb, args = words[0], words[1:]
        try:
            if verb == "grip" and len(args) == 1:
                self.grip(args[0])
            elif verb == "estop" and args in (["pressed"], ["released"]):
                self.estop(args[0] == "pressed")
            elif verb == "key" and args in (["inserted"], ["removed"]):
                self.safety_key(args[0] == "inserted")
            elif verb == "trainer" and args in (["on"], ["off"]):
                self.trainer_key(args[0] == "on")
            elif verb == "press" and len(args) == 1:
                self.press(args[0])
            elif verb in ("hold", "release") and len(args) == 1:
                self.hold(args[0], verb == "hold")
            elif verb == "target" and len(args) == 1:
                self.target(float(args[0]))
            elif verb == "stage" and len(args) == 1:
                self.stage(int(args[0]))
            elif verb == "client" and len(args) == 1:
                self.client(None if args[0] == "none" else args[0])
            elif verb == "mqtt" and len(args) >= 1:
                payload = line.split(None, 2)[2] if len(args) > 1 else ""
                self.mqtt(args[0], payload.encode())
            elif verb == "status" and not args:
                return "ok " + json.dumps(self.status(), separators=(",", ":"))
            elif verb == "sim":
                return "ok " + self.sim(args)
            elif verb == "console":
                return "ok " + self.console(args)
            else:
                return (
                    f"error unknown command {line.strip()[:80]!r}: see "
                    f"controller/tools/mockpanel.py"
                )
        except (MockPanelError, ValueError) as exc:
            return f"error {exc}"
        return "ok"


async def serve_mock_socket(path: Path, panel: MockPanel) -> None:
    """Serve the mock panel on a Unix socket until cancelled."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    writer.write(b"error line too long\n")
                    return
                if len(raw) > MAX_LINE_BYTES:
                    writer.write(b"error line too long\n")
                    continue
                answer = panel.handle(raw.decode("utf-8", errors="replace"))
                writer.write(answer.encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            return
        except asyncio.CancelledError:
            # The service is shutting down with a client connected. This is the top of the
            # connection's own task: end it quietly. Re-raised, asyncio's stream callback
            # (Python 3.11) logs the cancelled handler as an ERROR with a traceback.
            return
        finally:
            writer.close()

    await asyncio.to_thread(_prepare_socket_path, path)
    server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_LINE_BYTES * 2)
    await asyncio.to_thread(path.chmod, 0o600)
    logger.info("mock input panel listening on %s", path)
    try:
        async with server:
            await server.serve_forever()
    finally:
        _remove_socket(path)


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_socket(path)


def _remove_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
