"""The treadmill service: gathers inputs, calls the pure safety core, carries out its decisions.

Tasks (one ``asyncio.TaskGroup``, every task named):

* ``firmware-bridge``: the serial link (``firmware_bridge.port.bridge``);
* ``gpio-inputs``: watches the GPIO edge rate and reports a chattering input;
* ``control-loop``: the fixed-rate loop; the only place that calls ``decide``;
* ``mqtt-publisher``: telemetry and remote commands (never awaited by the loop);
* ``training-writer``: the session log (SQLite, off the loop);
* ``systemd-notify``: ``STATUS=`` updates (``WATCHDOG=1`` comes from the loop itself);
* ``mock-panel``: only with mock pins and a socket configured, drives the mock inputs.

The control loop runs on absolute deadlines (``t0 + k * period``) and is woken at once by an
edge on a safety input (e-stop, key, grips) and when a timer of the core runs out
(``Decision.next_deadline_ms``, SR-TIMER-1), so a grip grace acts when it ends, not at the
next tick. It never awaits I/O: motion commands are written
to the serial transport without waiting, telemetry is handed to the publisher by reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller import version
from controller.adapters.gpio.beltsensor import BeltSensor
from controller.adapters.gpio.inputs import (
    PanelInputs,
    PanelReading,
    TimedMockPin,
    make_pin_factory,
)
from controller.adapters.gpio.keyrelay import KeyRelayOutput
from controller.adapters.mqtt.commands import AssignClient, CommandRejected, ParsedCommand
from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.telemetry import diagnostics_payload, event_payload, state_payload
from controller.adapters.systemd import Notifier
from controller.errors import TreadmillError
from controller.rules import core
from controller.rules.model import (
    Button,
    CoreState,
    Decision,
    EStop,
    Event,
    FirmwareStatus,
    Inputs,
    LinkHealth,
    LocalCommand,
    Mode,
    MotionCommand,
    Press,
    RemoteCommand,
    RemoteStop,
    RequestStop,
    SafetyConfig,
    SetSpeed,
    Stop,
)
from controller.rules.reload import merge_for_running
from controller.runtime.stats import LoopStats, TickRecord
from controller.runtime.wiring import firmware_limits, firmware_status, input_specs, mqtt_settings
from controller.settings.config import ConfigError, load_config
from controller.settings.schema import AppConfig
from controller.training.program import TrainingProgram
from firmware_bridge.port.bridge import FirmwareBridge, StatusSnapshot

logger = logging.getLogger(__name__)

SIM_PORT = "sim://"
EXIT_OK = 0
EXIT_FAILURE = 1
MAX_PENDING_REMOTE = 32
STOP_REPEAT_MS = 250  # a Stop/EStop is re-sent this often while it stays the decision
WATCHDOG_EVERY_MS = 250
# A timer tick is scheduled this long after the core's deadline, so the millisecond clock
# the core reads has certainly reached it (a float seconds value may round just below).
TIMER_MARGIN_S = 0.00005
GPIO_CHATTER_EDGES_PER_S = 40
REJECT_LOG_EVERY_MS = 1000
#: A ``command_rejected`` event repeating the previous one's text within this time (holding
#: ``+`` at the limit) is counted, not logged or published again; the next one after the
#: window says how many were folded.
FOLD_REPEATS_MS = 5000
_FOLD_KEYS_MAX = 64


def monotonic_ms() -> int:
    """Integer milliseconds from the monotonic clock: the only clock the core sees."""
    return time.monotonic_ns() // 1_000_000


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


class Service:
    """The running controller. Build it with a loaded config, then ``await run()``."""

    def __init__(
        self,
        config: AppConfig,
        *,
        config_path: Path | None = None,
        pin_factory: Any | None = None,
        notifier: Notifier | None = None,
        clock_ms: Callable[[], int] = monotonic_ms,
        simulator: Any | None = None,
        enable_mqtt: bool | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._safety: SafetyConfig = config.safety()
        self._pending_safety: SafetyConfig | None = None
        self._pin_factory = pin_factory
        self.notifier = notifier if notifier is not None else Notifier()
        self._clock_ms = clock_ms
        self.simulator = simulator
        self._enable_mqtt = config.mqtt.enabled if enable_mqtt is None else enable_mqtt
        self._install_signal_handlers = install_signal_handlers

        self.state: CoreState = core.initial_state(self._safety)
        self.last_inputs: Inputs | None = None
        self.last_motion: MotionCommand | None = None
        self.last_decision: Decision | None = None
        self.loop_stats = LoopStats()
        self.observers: list[Callable[[TickRecord], None]] = []
        self.event_log: deque[tuple[int, Event]] = deque(maxlen=200)
        self.exit_code = EXIT_OK
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()

        self._pending_local: list[LocalCommand] = []
        self._pending_remote: deque[RemoteCommand] = deque()
        self._remote_stop = False
        self._shutdown_reason: str | None = None
        self._shutdown_started_ms: int | None = None
        self._reload_requested = False
        self._waiter: asyncio.Future[bool] | None = None
        self._wake_pending = False
        self._last_sent: tuple[MotionCommand, int] | None = None
        self._timer_deadline_ms: int | None = None  # the core's next timer deadline
        self._fw_snapshot: StatusSnapshot | None = None  # the STATUS last converted ...
        self._fw_status: FirmwareStatus | None = None  # ... and what it converted to
        self._last_watchdog_ms = -WATCHDOG_EVERY_MS
        self._session: dict[str, object] | None = None
        self._stage_cap = 1
        self._status_line = "starting"
        self._tasks: list[asyncio.Task[Any]] = []
        self._new_events: list[Event] = []  # events since the last TickRecord
        self._rejected_count = 0
        self._rejected_logged_ms = -REJECT_LOG_EVERY_MS
        self._folds: dict[str, tuple[int, int]] = {}  # message -> (shown at ms, folded since)
        self._combo_since_ms: int | None = None
        self._combo_fired = False
        self._internal_errors = 0
        self.mock_panel: Any | None = None  # a controller.tools.mockpanel.MockPanel with mock pins

        self.panel: PanelInputs | None = None
        self.belt_sensor: BeltSensor | None = None
        self.key_relay: KeyRelayOutput | None = None  # key-relay mode only
        self.relay_mode = config.drive.mode == "key_relay"
        self.bridge: FirmwareBridge | None = None
        self.publisher: Any | None = None
        self.training: Any | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ inputs from outside

    def now_ms(self) -> int:
        """The service's clock (integer monotonic milliseconds), as the core sees it."""
        return self._clock_ms()

    def submit_local(self, command: LocalCommand) -> None:
        """A local console action (mock panel, demo keys, scenario steps, training)."""
        self._pending_local.append(command)

    def on_remote_command(self, command: ParsedCommand) -> None:
        """Called by the MQTT publisher for every command it parsed. Cheap and non-blocking."""
        if isinstance(command, CommandRejected):
            # The publisher has already published the command_rejected event. Record it here
            # for logs and timelines, folding a flood into one line per second.
            now_ms = self._clock_ms()
            self._rejected_count += 1
            if now_ms - self._rejected_logged_ms < REJECT_LOG_EVERY_MS:
                return
            folded = self._rejected_count - 1
            self._rejected_count = 0
            self._rejected_logged_ms = now_ms
            more = f" (and {folded} more rejected in the last second)" if folded else ""
            self._emit(
                Event(
                    "command_rejected",
                    f"remote command {command.command!r} rejected: {command.reason}{more}",
                    {"command": command.command, "reason": command.reason, "folded": folded},
                ),
                publish=False,
            )
            return
        if isinstance(command, RemoteStop):
            self._remote_stop = True  # never dropped, whatever the queue holds
            self._wake()
            return
        if isinstance(command, AssignClient):
            self._assign_client(command.client_id, source="mqtt")
            return
        if len(self._pending_remote) >= MAX_PENDING_REMOTE:
            self._emit(
                Event(
                    "command_rejected",
                    f"remote command dropped: more than {MAX_PENDING_REMOTE} commands "
                    "waiting for one control tick",
                    {"command": type(command).__name__, "reason": "flood"},
                )
            )
            return
        self._pending_remote.append(command)

    def assign_client(self, client_id: str | None) -> None:
        """Assign (or clear) the client at the console (local)."""
        self._assign_client(client_id, source="console")

    def _assign_client(self, client_id: str | None, *, source: str) -> None:
        if self.training is None:
            self._emit(
                Event(
                    "command_rejected",
                    "client ids need the training program (training.enabled: true)",
                    {"command": "client", "reason": "training disabled"},
                )
            )
            return
        event = self.training.assign_client(
            client_id, belt_at_rest=self._belt_at_rest(), source=source
        )
        self._emit(event)

    def request_shutdown(self, reason: str = "shutdown") -> None:
        if self._shutdown_reason is None:
            logger.info("shutdown requested (%s): stopping the belt first", reason)
            self._shutdown_reason = reason
        self._wake()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)
        else:
            self._wake_pending = True

    # ------------------------------------------------------------------ helpers

    def _fold_repeat(self, event: Event, now_ms: int) -> Event | None:
        """``None`` for a ``command_rejected`` repeating a recent one; else the event to show
        (with ``repeats``: how many like it were folded since it was last shown)."""
        if event.kind != "command_rejected":
            return event
        shown = self._folds.get(event.message)
        if shown is not None and now_ms - shown[0] < FOLD_REPEATS_MS:
            self._folds[event.message] = (shown[0], shown[1] + 1)
            return None
        if len(self._folds) >= _FOLD_KEYS_MAX:
            self._folds = {k: v for k, v in self._folds.items() if now_ms - v[0] < FOLD_REPEATS_MS}
        self._folds[event.message] = (now_ms, 0)
        folded = shown[1] if shown is not None else 0
        if not folded:
            return event
        return dataclasses.replace(
            event,
            message=f"{event.message} (and {folded} more like it)",
            details={**event.details, "repeats": folded},
        )

    def _emit(self, event: Event, *, publish: bool = True) -> None:
        now_ms = self._clock_ms()
        shown = self._fold_repeat(event, now_ms)
        if shown is None:
            self._new_events.append(event)  # timelines and observers see every one
            return
        event = shown
        self.event_log.append((now_ms, event))
        if event.kind == "transition":
            logger.info("%s", event.message)
        elif event.kind in ("fault", "storage_error", "config_rejected", "link_lost"):
            logger.warning("%s: %s", event.kind, event.message)
        else:
            logger.info("%s: %s", event.kind, event.message)
        if publish and self.publisher is not None:
            self.publisher.publish_event(event_payload(ts=datetime.now(UTC), event=event))
        self._new_events.append(event)

    def _belt_at_rest(self) -> bool:
        """The core's verdict of the last tick (``Decision.belt_at_rest``): idle or faulted,
        a usable firmware status, measured speed and firmware set-point at standstill."""
        return self.last_decision is not None and self.last_decision.belt_at_rest

    def status_line(self) -> str:
        state = self.state
        fault = f" fault={state.fault.code}" if state.fault else ""
        measured = ""
        if self.last_inputs is not None and self.last_inputs.firmware is not None:
            measured = f" belt={self.last_inputs.firmware.measured_kmh:.2f}km/h"
        return f"{state.mode} stage={state.stage}{measured}{fault}"

    def _firmware_fresh(self) -> bool:
        """The core's verdict of the last tick (``Decision.firmware_fresh``). In key-relay
        mode there is no firmware: the inputs are fresh once the loop has ticked."""
        if self.relay_mode:
            return self.last_decision is not None
        return self.last_decision is not None and self.last_decision.firmware_fresh

    # ------------------------------------------------------------------ motion

    def _carry_out(self, motion: MotionCommand, now_ms: int) -> None:
        bridge = self.bridge
        if bridge is None:
            return
        if isinstance(motion, SetSpeed):
            # Sent every tick: each SET_SPEED renews the firmware's lease.
            bridge.set_speed(motion.speed_kmh, motion.accel_kmh_s, motion.lease_ms)
            self._last_sent = (motion, now_ms)
            return
        last = self._last_sent
        if last is not None and last[0] == motion and now_ms - last[1] < STOP_REPEAT_MS:
            return  # the same stop was sent moments ago (reliable: acked and retransmitted)
        if isinstance(motion, EStop):
            bridge.estop()
        elif isinstance(motion, Stop):
            bridge.stop(motion.decel_kmh_s)
        self._last_sent = (motion, now_ms)

    def _internal_fault(self, exc: Exception) -> None:
        """An exception in a tick: latch ``internal`` with a controlled stop and keep the loop
        alive, so the stop stays commanded and watched (SR-FAULT-4). The first one is logged
        with its traceback; repeats are counted."""
        now_ms = self._clock_ms()
        self._internal_errors += 1
        what = f"{type(exc).__name__}: {exc}"
        if self._internal_errors == 1:
            logger.error(
                "internal error in the control tick (%s): latching 'internal', controlled stop",
                what,
                exc_info=exc,
            )
        else:
            logger.debug("internal error in the control tick again (%s)", what)
        decision = core.internal_fault(
            self.state, self._safety, now_ms, f"Internal error in the control tick ({what})"
        )
        self.state = decision.state
        self.last_motion = decision.motion
        self._carry_out(decision.motion, now_ms)
        for event in decision.events:
            self._emit(event)

    def _last_resort_stop(self, reason: str) -> None:
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
        if self.bridge is not None:
            try:
                self.bridge.stop(self._safety.stop_decel_kmh_s)
            except Exception:
                logger.exception("could not send STOP; the firmware lease will stop the belt")

    def _emergency_stop(self, reason: str) -> None:
        """Last resort when a task fails: ESTOP on the wire, if there is a wire."""
        logger.critical("emergency stop: %s", reason)
        if self.bridge is not None:
            try:
                self.bridge.estop()
            except Exception:
                logger.exception("could not send ESTOP; the firmware lease will stop the belt")

    # ------------------------------------------------------------------ the tick

    def _parts(self) -> tuple[PanelInputs, FirmwareBridge]:
        if self.panel is None or self.bridge is None:
            raise RuntimeError("the service's GPIO inputs and firmware bridge are not open yet")
        return self.panel, self.bridge

    def _tick(self) -> None:
        """One control tick: gather inputs, decide, carry out. Never awaits."""
        if self.panel is None:
            raise RuntimeError("the service's GPIO inputs are not open yet")
        panel = self.panel
        bridge = self.bridge
        now_ms = self._clock_ms()
        reading = panel.read(now_ms)
        local: list[LocalCommand] = [Press(b) for b in reading.presses]
        local.extend(self._pending_local)
        self._pending_local.clear()
        if self._shutdown_reason is not None and self.state.mode == Mode.RUNNING:
            local.append(RequestStop(self._shutdown_reason))
        remote: list[RemoteCommand] = []
        if self._remote_stop:
            remote.append(RemoteStop())
            self._remote_stop = False
        remote.extend(self._pending_remote)
        self._pending_remote.clear()

        inputs = Inputs(
            grip_left=reading.grip_left,
            grip_right=reading.grip_right,
            estop_pressed=reading.estop_pressed,
            safety_key_present=reading.safety_key_present,
            firmware=self._firmware_input(bridge.latest()) if bridge is not None else None,
            local=tuple(local),
            remote=tuple(remote),
            stage_cap=self._stage_cap,
            belt_sensor=self.belt_sensor.read() if self.belt_sensor is not None else None,
            link=link_health(bridge) if bridge is not None else None,
        )
        decision = core.decide(self.state, inputs, self._safety, now_ms)
        self._carry_out(decision.motion, now_ms)
        if decision.clear_firmware_fault and bridge is not None:
            bridge.clear_fault()
        if decision.key_relay and self.key_relay is not None:
            self.key_relay.toggle()  # SR-MON-1: the relay stays in only while this goes on
        self.state = decision.state
        self._timer_deadline_ms = decision.next_deadline_ms
        self.last_inputs = inputs
        self.last_motion = decision.motion
        self.last_decision = decision
        if not self.ready.is_set() and core.link_settled(self.state, inputs, self._safety, now_ms):
            # Ready once a START could be accepted as far as the link goes (SR-LINK-2).
            self.ready.set()
            self.notifier.ready(self.status_line())
            logger.info(
                "ready: controller %s, firmware handshake done and the link settled, "
                "control loop at %s Hz",
                version(),
                self.config.control.rate_hz,
            )
        for event in decision.events:
            self._emit(event)

        measured = inputs.firmware.measured_kmh if inputs.firmware is not None else None
        if self.training is not None:
            out = self.training.on_tick(
                now_ms=now_ms,
                utc=datetime.now(UTC),
                core=self.state,
                measured_kmh=measured,
                belt_at_rest=decision.belt_at_rest,
                events=decision.events,
                trainer_action=self._trainer_action(reading, now_ms),
            )
            self._stage_cap = out.stage_cap
            self._session = out.session
            if out.request_stop is not None:
                self._pending_local.append(RequestStop(out.request_stop))
            for event in out.events:
                self._emit(event)
            if out.finished_session is not None and self.publisher is not None:
                self.publisher.publish_session(out.finished_session)
        else:
            self._stage_cap = len(self._safety.stages)

        if self._pending_safety is not None and self._belt_at_rest():
            self._safety = self._pending_safety
            self._pending_safety = None
            self._emit(
                Event("config_applied", "loosened limits applied now that the belt is at rest")
            )

        if self._firmware_fresh() and now_ms - self._last_watchdog_ms >= WATCHDOG_EVERY_MS:
            self.notifier.watchdog()
            self._last_watchdog_ms = now_ms

        if self.publisher is not None and self._new_events:
            self.publisher.nudge()  # the publisher pulls the state at its own rate

        if self.observers:
            record = TickRecord(
                now_ms=now_ms,
                state=self.state,
                inputs=inputs,
                motion=decision.motion,
                events=tuple(self._new_events),
                belt_true_kmh=self._belt_true_kmh(),
                session=self._session,
            )
            for observer in self.observers:
                observer(record)
        self._new_events.clear()

    def _firmware_input(self, snapshot: StatusSnapshot | None) -> FirmwareStatus | None:
        """The core's view of the latest STATUS, converted once per STATUS frame."""
        if snapshot is not self._fw_snapshot:
            self._fw_snapshot = snapshot
            self._fw_status = firmware_status(snapshot)
        return self._fw_status

    def _trainer_action(self, reading: PanelReading, now_ms: int) -> bool:
        """The local trainer action configured in ``training.trainer`` (never remote).

        ``trainer_key``: the trainer key switch is on and STAGE_UP is pressed.
        ``buttons``: every configured button held together for ``hold_ms``; fires once per hold.
        """
        trainer = self.config.training.trainer
        if trainer.input == "trainer_key":
            return reading.trainer_key and Button.STAGE_UP in reading.presses
        combo = {Button(name) for name in trainer.buttons}
        if not combo <= reading.held:
            self._combo_since_ms = None
            self._combo_fired = False
            return False
        if self._combo_since_ms is None:
            self._combo_since_ms = now_ms
        if not self._combo_fired and now_ms - self._combo_since_ms >= trainer.hold_ms:
            self._combo_fired = True
            return True
        return False

    def _belt_true_kmh(self) -> float | None:
        if self.simulator is None:
            return None
        return float(self.simulator.firmware.true_speed_kmh)

    def link_info(self) -> dict[str, object]:
        info: dict[str, object] = {}
        if self.bridge is not None:
            info.update(dataclasses.asdict(self.bridge.stats))
        info["loop"] = self.loop_stats.as_dict()
        if self.publisher is not None:
            info["mqtt"] = dataclasses.asdict(self.publisher.stats)
        return info

    def _mqtt_state(self) -> dict[str, object]:
        """The MQTT ``state`` payload: the counters go to ``diagnostics`` instead."""
        return self.telemetry(self._clock_ms(), with_link=False)

    def diagnostics(self) -> dict[str, object]:
        """The MQTT ``diagnostics`` payload (docs/mqtt.md): link, loop and MQTT counters."""
        return diagnostics_payload(ts=datetime.now(UTC), link=self.link_info())

    def telemetry(self, now_ms: int, *, with_link: bool = True) -> dict[str, object]:
        """The ``state`` payload (docs/mqtt.md); ``with_link`` adds the counters under
        ``link`` (the local status and tools; MQTT sends them apart, less often)."""
        inputs = self.last_inputs
        if inputs is None:
            inputs = Inputs(False, False, False, False, None)
        belt = self._belt_true_kmh()
        return state_payload(
            ts=datetime.now(UTC),
            now_ms=now_ms,
            core=self.state,
            inputs=inputs,
            safety=self._safety,
            belt_kmh=belt,
            link=self.link_info() if with_link else None,
            session=self._session,
            warnings=sorted(self.state.warnings),
            firmware_version=self._firmware_version(),
            decision=self.last_decision,
        )

    def _firmware_version(self) -> str | None:
        hello = self.bridge.hello if self.bridge is not None else None
        return hello.fw_version if hello is not None else None

    # ------------------------------------------------------------------ control loop

    def _timer_loop_time(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """The core's next timer deadline on the event loop's clock, or None."""
        deadline_ms = self._timer_deadline_ms
        if deadline_ms is None:
            return None
        if self._clock_ms is monotonic_ms:
            # loop.time() is time.monotonic(): the very clock of monotonic_ms.
            return deadline_ms / 1000.0 + TIMER_MARGIN_S
        return loop.time() + (deadline_ms - self._clock_ms()) / 1000.0 + TIMER_MARGIN_S

    async def _wait_until(self, deadline: float, timer_at: float | None = None) -> bool:
        """Sleep until the loop-clock ``deadline``; True if woken before it, by a safety edge
        or by the core's timer deadline ``timer_at`` (loop clock) falling before it."""
        if self._wake_pending:
            self._wake_pending = False
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiter = future
        if timer_at is not None and timer_at < deadline:
            handle = loop.call_at(timer_at, _resolve, future, True)
        else:
            handle = loop.call_at(deadline, _resolve, future, False)
        try:
            return await future
        finally:
            handle.cancel()
            self._waiter = None

    async def _control_loop(self) -> None:
        loop = asyncio.get_running_loop()
        await self._wait_for_firmware()
        # Start-up garbage is frozen out of the collector, so a full collection during a
        # command flood does not pause the loop for tens of milliseconds.
        gc.collect()
        gc.freeze()
        period_s = 1.0 / self.config.control.rate_hz
        late_threshold_s = period_s / 4
        next_deadline = loop.time() + period_s
        try:
            while True:
                timer_at = self._timer_loop_time(loop)
                woken = await self._wait_until(next_deadline, timer_at)
                now = loop.time()
                if woken:
                    self.loop_stats.woken_ticks += 1
                    if timer_at is not None and now >= timer_at:
                        self.loop_stats.timer_ticks += 1
                else:
                    lateness_s = now - next_deadline
                    self.loop_stats.record(lateness_s, late_threshold_s)
                    if lateness_s >= period_s:
                        skipped = int(lateness_s // period_s)
                        self.loop_stats.missed_ticks += skipped
                        next_deadline += skipped * period_s
                    next_deadline += period_s
                self.loop_stats.ticks += 1
                if self._reload_requested:
                    self._reload_requested = False
                    self._tasks.append(asyncio.create_task(self._reload(), name="config-reload"))
                try:
                    self._tick()
                except Exception as exc:  # the single catch-all (SR-FAULT-4)
                    self._internal_fault(exc)
                if self._shutdown_reason is not None and self._shutdown_done():
                    break
        except asyncio.CancelledError:
            self._last_resort_stop("control loop cancelled while the service was running")
            raise
        except Exception:
            # The catch-all itself failed: the fault could not be recorded or the STOP not
            # handed over. The process exits; the firmware's lease stops the belt (SR-FAULT-4).
            self._last_resort_stop("the control loop's error handling failed")
            raise
        self._finish_shutdown()

    async def _wait_for_firmware(self) -> None:
        if self.relay_mode:
            return  # no firmware: the treadmill's own console drives the belt
        _, bridge = self._parts()
        waited_s = 0.0
        while not bridge.ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bridge.ready.wait(), timeout=5.0)
            if not bridge.ready.is_set():
                waited_s += 5.0
                error = bridge.stats.last_error or "no answer"
                message = (
                    f"waiting for the firmware on {self.config.serial.port} for {waited_s:.0f} s "
                    f"({error}); the belt cannot start. Check the cable and serial.port."
                )
                logger.error("%s", message)
                self.notifier.status(message)
            if self._shutdown_reason is not None:
                raise _ShutdownBeforeReadyError

    def _shutdown_done(self) -> bool:
        now_ms = self._clock_ms()
        if self._shutdown_started_ms is None:
            self._shutdown_started_ms = now_ms
        if not self._firmware_fresh():
            logger.warning(
                "shutting down with the firmware link down: the firmware lease (%d ms) "
                "stops the belt",
                self._safety.lease_ms,
            )
            return True
        if self._belt_at_rest():
            return True
        timeout_ms = int(self.config.control.shutdown_timeout_s * 1000)
        if now_ms - self._shutdown_started_ms > timeout_ms:
            logger.error(
                "belt not at rest %d ms after the shutdown request: sending ESTOP", timeout_ms
            )
            self._emergency_stop("shutdown timeout")
            self.exit_code = EXIT_FAILURE
            return True
        return False

    def _finish_shutdown(self) -> None:
        self.notifier.stopping(f"stopped: {self._shutdown_reason}")
        logger.info("belt at rest; service stopping (%s)", self._shutdown_reason)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    # ------------------------------------------------------------------ reload

    async def _reload(self) -> None:
        self.notifier.reloading()
        path = self.config_path
        if path is None:
            self._emit(Event("config_rejected", "no config file to reload"))
            self.notifier.ready(self.status_line())
            return
        try:
            new_config = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            for line in exc.lines():
                logger.error("%s", line)
            self._emit(
                Event(
                    "config_rejected",
                    f"{path}: {len(exc.lines())} problem(s); still running on the previous "
                    f"config. First: {exc.lines()[0] if exc.lines() else '?'}",
                    {"file": str(path), "problems": len(exc.lines())},
                )
            )
            self.notifier.ready(self.status_line())
            return
        self.apply_config(new_config, str(path))
        self.notifier.ready(self.status_line())

    def apply_config(self, new_config: AppConfig, source: str) -> None:
        """Apply a loaded, checked config as SIGHUP does: tighter limits at once, looser ones
        when the belt is at rest; a stage no longer in the table is clamped by the core at
        the next tick (SR-STAGE-6). Sections that need a restart keep their running values."""
        new_safety = new_config.safety()
        restart_needed = [
            section
            for section in ("serial", "gpio", "mqtt", "firmware", "treadmill", "state_dir")
            if getattr(new_config, section) != getattr(self.config, section)
        ]
        if "firmware" in restart_needed:
            # The firmware was configured at the handshake; its limits stay in force. The core
            # limits that mirror them are kept too, so the two layers agree.
            new_safety = dataclasses.replace(
                new_safety,
                machine_max_kmh=self._safety.machine_max_kmh,
                lease_ms=self._safety.lease_ms,
                stale_ms=self._safety.stale_ms,
            )
        if self._belt_at_rest():
            self._safety = new_safety
            self._pending_safety = None
            applied = "applied"
        else:
            self._safety = merge_for_running(self._safety, new_safety)
            self._pending_safety = new_safety
            applied = "tighter limits applied now, looser ones when the belt is at rest"
        self.config = new_config.model_copy(
            update={s: getattr(self.config, s) for s in restart_needed}
        )
        message = f"{source} reloaded: {applied}"
        if restart_needed:
            message += f"; changes to {', '.join(restart_needed)} need a restart"
        self._emit(Event("config_reloaded", message, {"file": source}))

    # ------------------------------------------------------------------ other tasks

    async def _guard(self, name: str, awaitable: Awaitable[None]) -> None:
        """Run a task; if it fails, ESTOP before the error takes the service down."""
        try:
            await awaitable
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("task %s failed", name)
            self._last_resort_stop(f"task {name} failed")
            raise

    async def _gpio_watch(self) -> None:
        """Report GPIO chatter: an edge rate no person can produce means a wiring fault."""
        panel = self.panel
        if panel is None:
            raise RuntimeError("the service's GPIO inputs are not open yet")
        last_edges = panel.edges
        warned = False
        while True:
            await asyncio.sleep(1.0)
            rate = panel.edges - last_edges
            last_edges = panel.edges
            if rate >= GPIO_CHATTER_EDGES_PER_S and not warned:
                self._emit(
                    Event(
                        "gpio_chatter",
                        f"{rate} GPIO edges in one second on the grip/e-stop/key/button "
                        "inputs: check the wiring and connectors",
                        {"edges_per_s": rate},
                    )
                )
                warned = True
            elif rate < GPIO_CHATTER_EDGES_PER_S // 4:
                warned = False

    async def _notify_task(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            line = self.status_line()
            if line != self._status_line:
                self._status_line = line
                self.notifier.status(line)

    def _on_link_change(self, up: bool, reason: str) -> None:
        if up:
            self._emit(
                Event("link_restored", f"firmware link up ({reason}; controller {version()})")
            )
        else:
            self._emit(Event("link_lost", f"firmware link down: {reason}"))

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        """Run until shutdown. Returns the process exit status."""
        self._loop = asyncio.get_running_loop()
        loop = self._loop
        if self._install_signal_handlers:
            loop.add_signal_handler(signal.SIGTERM, self.request_shutdown, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self.request_shutdown, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._start_parts(stack)
                try:
                    await self._run_tasks()
                except BaseExceptionGroup:
                    # Python 3.11's TaskGroup leaves this task marked as cancelled when a child
                    # fails (CPython gh-116720, fixed in 3.12): the clean-up below (closing the
                    # serial port, the simulator) would then be interrupted at its first await.
                    task = asyncio.current_task()
                    while task is not None and task.cancelling() > 0:
                        task.uncancel()
                    raise
        except* _ShutdownBeforeReadyError:
            logger.info("shutdown requested before the firmware answered; the belt never moved")
        except* Exception as group:
            for exc in group.exceptions:
                logger.critical("service failed: %s", exc, exc_info=exc)
            self.exit_code = EXIT_FAILURE
        finally:
            if self._install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            self.notifier.close()
            self.stopped.set()
        return self.exit_code

    async def _start_parts(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        port = config.serial.port
        if port == SIM_PORT and self.relay_mode:
            if self.simulator is None:
                from firmware_bridge.sim.console import ConsoleSimulator  # noqa: PLC0415

                self.simulator = ConsoleSimulator()
            await stack.enter_async_context(self.simulator)
        elif port == SIM_PORT:
            if self.simulator is None:
                # A stable link, like /dev/serial/by-id: after a simulated replug the bridge
                # reopens this simulator's new pty, never a recycled /dev/pts/N of another.
                # The simulator is a developer tool: loaded only when the config asks for it.
                from firmware_bridge.sim.pty import PtySimulator  # noqa: PLC0415

                link_dir = Path(tempfile.mkdtemp(prefix="treadmill-sim-"))
                stack.callback(shutil.rmtree, link_dir, ignore_errors=True)
                self.simulator = PtySimulator(link_path=link_dir / "ttySIM0")
            await stack.enter_async_context(self.simulator)
            port = self.simulator.port
        factory = self._pin_factory
        if factory is None:
            factory = make_pin_factory(config.gpio.pin_factory)
            self._pin_factory = factory
        self.panel = PanelInputs(
            input_specs(config),
            pin_factory=factory,
            grip_debounce_ms=config.grip_sensor.debounce_ms,
            on_safety_edge=self._wake,
            loop=asyncio.get_running_loop(),
            clock_ms=self._clock_ms,
        )
        stack.callback(self.panel.close)
        self._open_belt_sensor(stack, factory)
        if config.gpio.pin_factory == "mock":
            # Mock pins start at their pull level, which for fail-safe wiring means "e-stop
            # pressed, key removed". Put the simulated console in its normal state. The mock
            # panel is a developer tool: loaded only with mock pins.
            from controller.tools.mockpanel import MockPanel  # noqa: PLC0415

            self.mock_panel = MockPanel(self)
            self.mock_panel.reset_inputs()
        if self.relay_mode:
            self._open_key_relay(stack, factory)
        else:
            self._open_bridge(port)
        if config.training.enabled:
            self.training = TrainingProgram(
                config.training,
                self._safety.stages,
                treadmill_id=config.treadmill.id,
                db_path=Path(config.state_dir) / config.training.db_file,
                standstill_kmh=self._safety.standstill_kmh,
            )
            for event in await self.training.open():
                self._emit(event)
        if self._enable_mqtt:
            self.publisher = MqttPublisher(mqtt_settings(config), on_command=self.on_remote_command)
            self.publisher.set_sources(state=self._mqtt_state, diagnostics=self.diagnostics)

    def _open_bridge(self, port: str) -> None:
        config = self.config
        self.bridge = FirmwareBridge(
            port,
            baud=config.serial.baud,
            limits=firmware_limits(config),
            clock_ms=self._clock_ms,
            handshake_timeout_ms=config.serial.handshake_timeout_ms,
            link_timeout_ms=config.serial.link_timeout_ms,
            # an in-memory simulator (firmware_bridge.sim.memory) brings its own link
            open_port=getattr(self.simulator, "open_connection", None),
        )
        self.bridge.on_link_change = self._on_link_change

    def _open_key_relay(self, stack: contextlib.AsyncExitStack, factory: Any) -> None:
        """Key-relay mode: the relay output, wired to an in-process console simulator."""
        section = self.config.drive.key_relay
        if section is None:  # refused by the config loader
            raise RuntimeError("drive.mode is key_relay but drive.key_relay is missing")
        relay = KeyRelayOutput(section.pin, pin_factory=factory)
        stack.callback(relay.close)
        self.key_relay = relay
        toggled = getattr(self.simulator, "relay_toggled", None)
        if toggled is not None:
            relay.on_toggle = toggled

    def _open_belt_sensor(self, stack: contextlib.AsyncExitStack, factory: Any) -> None:
        """The Pi's own belt sensor, when configured (second speed channel, SR-CHAN-*).

        With the in-process simulator and mock pins, the simulated sensor's pulses drive the
        sensor's mock pin, stamped with the time each pulse happened.
        """
        section = self.config.belt_sensor
        if section is None:
            return
        sensor = BeltSensor(
            section.pin,
            pin_factory=factory,
            active_high=section.active == "high",
            pull=section.pull,
            distance_per_pulse_mm=section.distance_per_pulse_mm,
            debounce_ms=section.debounce_ms,
            stale_ms=section.stale_ms,
        )
        self.belt_sensor = sensor
        stack.callback(sensor.close)
        pin = sensor.pin
        if self.simulator is not None and isinstance(pin, TimedMockPin):
            active_high = section.active == "high"

            def drive(pulses_ms: list[float]) -> None:
                for pulse_ms in pulses_ms:
                    at_s = pulse_ms / 1000.0
                    pin.drive_at(active_high, at_s)
                    pin.drive_at(not active_high, at_s + 0.0005)  # a 0.5 ms pulse

            self.simulator.attach_belt_sensor(section.distance_per_pulse_mm, drive)

    async def _run_tasks(self) -> None:
        bridge = self.bridge
        async with asyncio.TaskGroup() as group:
            spawn: list[tuple[str, Coroutine[Any, Any, None]]] = [
                ("gpio-inputs", self._guard("gpio-inputs", self._gpio_watch())),
                ("systemd-notify", self._guard("systemd-notify", self._notify_task())),
            ]
            if bridge is not None:
                spawn.insert(0, ("firmware-bridge", self._guard("firmware-bridge", bridge.run())))
            if self.publisher is not None:
                spawn.append(
                    ("mqtt-publisher", self._guard("mqtt-publisher", self.publisher.run()))
                )
            if self.training is not None:
                spawn.append(
                    ("training-writer", self._guard("training-writer", self.training.run_writer()))
                )
            if self.mock_panel is not None and self.config.gpio.mock_socket:
                from controller.tools.mockpanel import serve_mock_socket  # noqa: PLC0415

                panel = self.mock_panel
                spawn.append(
                    (
                        "mock-panel",
                        self._guard(
                            "mock-panel",
                            serve_mock_socket(Path(self.config.gpio.mock_socket), panel),
                        ),
                    )
                )
            for name, coro in spawn:
                self._tasks.append(group.create_task(coro, name=name))
            group.create_task(self._control_loop(), name="control-loop")
        if self.training is not None:
            await self.training.close()


class _ShutdownBeforeReadyError(TreadmillError):
    """SIGTERM arrived before the firmware handshake: nothing moved, exit cleanly."""


def _resolve(future: asyncio.Future[bool], early: bool) -> None:
    if not future.done():
        future.set_result(early)
