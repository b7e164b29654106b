"""The demo's running session: the service, its mock console, the terminal view and keys,
and the built-in session without a terminal (:mod:`controller.tools.demo` is the command).

:func:`demo_session` runs a :class:`~controller.runtime.service.Service` built by
:func:`controller.tools.demo.demo_config` until it stops: full screen with keys on a
terminal, else the built-in session (:data:`HEADLESS_SCRIPT`, or
:data:`HEADLESS_MONITOR_SCRIPT` in key-relay mode) printed as plain lines. It reads time
only from the service's clock and the running loop, so it runs on a virtual clock too
(:mod:`controller.tools.virtual_time`), as the tests do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import termios
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from controller.tools.view import (
    HIDE_CURSOR,
    SHOW_CURSOR,
    StageLimits,
    TreadmillView,
    ViewEvent,
    render_line,
    render_screen,
    screen_text,
    stage_limits,
    view_from_state,
)

if TYPE_CHECKING:
    from controller.rules.model import Event
    from controller.runtime.service import Service
    from controller.runtime.stats import TickRecord
    from controller.tools.broker import DemoBroker
    from controller.tools.mockpanel import MockPanel

__all__ = [
    "HEADLESS_MONITOR_SCRIPT",
    "HEADLESS_SCRIPT",
    "demo_session",
]

logger = logging.getLogger(__name__)

REFRESH_S: Final = 0.15  # screen redraws: about 7 a second
PLAIN_EVERY_S: Final = 0.5  # plain-text state lines: twice a second
TARGET_STEP_KMH: Final = 0.5
TARGET_KEYS_ADD_UP_MS: Final = 200  # +/- keys closer together than this add up
EVENTS_SHOWN: Final = 6
ALT_SCREEN_ON: Final = "\x1b[?1049h"
ALT_SCREEN_OFF: Final = "\x1b[?1049l"
STARTUP_TIMEOUT_S: Final = 20.0
REST_KMH: Final = 0.1  # the belt counts as at rest at or below this (as the scenarios)

KEY_HELP: Final = (
    "  keys: g grip  s START  x STOP  +/- target  1-4 stage  e e-stop  k key  r RESET",
    "        c cable unplug/plug  q quit",
)
KEY_HELP_MONITOR: Final = (
    "  keys: g grip  s START (relay)  x STOP (relay)  1-4 stage  e e-stop  k key  r RESET",
    "        console: b START  n STOP  +/- speed     h hang the Pi 1 s  q quit",
)
HANG_KEY_MS: Final = 1000


@dataclass
class _RunMeter:
    """Time and belt distance since the last START (when there is no training session)."""

    started_ms: int | None = None
    last_ms: int | None = None
    elapsed_s: float = 0.0
    distance_m: float = 0.0

    def observe(self, record: TickRecord) -> None:
        if any(event.kind == "started" for event in record.events):
            self.started_ms = record.now_ms
            self.elapsed_s = 0.0
            self.distance_m = 0.0
        belt = record.belt_true_kmh
        if belt is None and record.inputs.firmware is not None:
            belt = record.inputs.firmware.measured_kmh
        if self.started_ms is not None and self.last_ms is not None:
            dt_s = (record.now_ms - self.last_ms) / 1000.0
            if record.state.mode.value in ("running", "stopping") or (belt or 0.0) > 0.1:
                self.elapsed_s += dt_s
                self.distance_m += (belt or 0.0) / 3.6 * dt_s
        self.last_ms = record.now_ms


@dataclass
class _RelayWatch:
    """Key-relay mode: the simulated relay contact as the demo reports it.

    The relay has no feedback to the Pi; the simulator knows when its contact opened
    (``hold_off_ms`` plus the release time after the last toggle) and when the belt was
    then at rest (at the first tick at or below :data:`REST_KMH`, so to within a tick).
    """

    closed: bool = False
    opens_at_ms: float | None = None  # when the contact opens if no toggle comes
    opened_ms: float | None = None  # when it last opened
    rest_after_open_ms: float | None = None  # belt at rest this long after it opened
    lines: list[str] = field(default_factory=list)  # for the plain-text session

    def observe(self, now_ms: int, relay: Any, belt_kmh: float | None) -> None:
        closed = bool(relay.closed(now_ms))
        if closed:
            if not self.closed:
                self.lines.append("relay closed: the console may run the belt")
            self.opens_at_ms = relay.opens_at_ms()
        elif self.closed:
            opened = self.opens_at_ms if self.opens_at_ms is not None else float(now_ms)
            self.opened_ms = opened
            self.rest_after_open_ms = None
            self.lines.append("relay OPEN: the key circuit is cut, the belt stops")
        elif (
            self.opened_ms is not None
            and self.rest_after_open_ms is None
            and belt_kmh is not None
            and belt_kmh <= REST_KMH
        ):
            self.rest_after_open_ms = now_ms - self.opened_ms
            self.lines.append(
                f"belt at rest {self.rest_after_open_ms:.0f} ms after the relay opened"
            )
        self.closed = closed


class _Demo:
    """One demo run: the service, its mock console, and what the view shows."""

    def __init__(self, service: Service, broker: DemoBroker | None, socket_path: Path) -> None:
        self.service = service
        self.broker = broker
        self.socket_path = socket_path
        self.meter = _RunMeter()
        self.relay = _RelayWatch()
        self.t0_ms = service.now_ms()
        self.grip_held = False
        self.estop_pressed = False
        self.key_inserted = True
        self.cable_plugged = True
        self._target: tuple[float, int] | None = None  # (km/h, when) of the last +/- key
        self._panel: MockPanel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.pending_events: list[tuple[int, Event]] = []
        service.observers.append(self._observe)

    @property
    def monitor(self) -> bool:
        """Key-relay (monitor) mode: the treadmill's own console drives the belt."""
        return self.service.relay_mode

    def _observe(self, record: TickRecord) -> None:
        self.meter.observe(record)
        self.pending_events.extend((record.now_ms, event) for event in record.events)
        console = getattr(self.service.simulator, "console", None)
        if console is not None:
            self.relay.observe(record.now_ms, console.relay, record.belt_true_kmh)

    @property
    def panel(self) -> MockPanel:
        if self._panel is None:
            from controller.tools.mockpanel import MockPanel  # noqa: PLC0415 - needs the service

            self._panel = MockPanel(self.service)
        return self._panel

    def notes(self) -> tuple[str, ...]:
        lines = list(KEY_HELP_MONITOR if self.monitor else KEY_HELP)
        if self.broker is not None:
            lines.append(f"  telemetry: {self.broker.subscribe_hint()}")
            lines.append(f"  or: treadmill monitor --port {self.broker.port}")
        else:
            lines.append("  MQTT off: no broker (install mosquitto, or pip install -e '.[demo]')")
        lines.append(
            f"  mock console socket: {self.socket_path} (see controller/tools/mockpanel.py)"
        )
        return tuple(lines)

    def limits(self) -> StageLimits | None:
        stages = self.service.config.stage_configs()
        stage = self.service.state.stage
        return stage_limits(stages[stage - 1]) if 1 <= stage <= len(stages) else None

    def events(self) -> tuple[ViewEvent, ...]:
        shown = [
            (now_ms, event)
            for now_ms, event in self.service.event_log
            if event.kind not in ("transition", "target_changed")
        ][-EVENTS_SHOWN:]
        return tuple(
            ViewEvent(f"{(now_ms - self.t0_ms) / 1000:.1f} s", event.kind, event.message)
            for now_ms, event in shown
        )

    def view(self, *, with_notes: bool) -> TreadmillView:
        now_ms = self.service.now_ms()
        payload = self.service.telemetry(now_ms)
        gauge_max = max(stage.max_kmh for stage in self.service.config.stage_configs())
        mode = ", key-relay mode" if self.monitor else ""
        return view_from_state(
            payload,
            title=f"{self.service.config.treadmill.name} (simulated{mode})",
            events=self.events(),
            limits=self.limits(),
            gauge_max_kmh=gauge_max,
            session_s=self.meter.elapsed_s if self.meter.started_ms is not None else None,
            distance_m=self.meter.distance_m if self.meter.started_ms is not None else None,
            notes=self.notes() if with_notes else (),
        )

    # ------------------------------------------------------------------ console actions

    def key(self, char: str) -> None:
        """One key press from the terminal."""
        from controller.rules.model import SelectStage, SetTarget  # noqa: PLC0415

        service = self.service
        if service.panel is None:
            return  # inputs not open yet
        if self.monitor and char in "bn+=-_h":
            self.console_key(char)
        elif char == "g":
            self.grip_held = not self.grip_held
            self.panel.grip("both" if self.grip_held else "none")
        elif char == "s":
            self.panel.press("start")
        elif char == "x":
            self.panel.press("stop")
        elif char in "+=-_":
            step = TARGET_STEP_KMH if char in "+=" else -TARGET_STEP_KMH
            service.submit_local(SetTarget(self.next_target(step)))
        elif char in "1234":
            service.submit_local(SelectStage(int(char)))
        elif char == "e":
            self.estop_pressed = not self.estop_pressed
            self.panel.estop(self.estop_pressed)
        elif char == "k":
            self.key_inserted = not self.key_inserted
            self.panel.safety_key(self.key_inserted)
        elif char == "r":
            self.panel.press("reset")
        elif char == "c":
            self.toggle_cable()
        elif char in ("q", "\x04"):
            service.request_shutdown("quit from the demo")

    def console_key(self, char: str) -> None:
        """Key-relay mode: a key of the treadmill's own console (through the mock panel),
        or ``h``: the Pi hangs for :data:`HANG_KEY_MS` (its relay output stops toggling)."""
        if char == "h":
            self.panel.handle(f"sim hang {HANG_KEY_MS}")
            return
        key = {"b": "start", "n": "stop", "+": "faster", "=": "faster"}.get(char, "slower")
        self.panel.handle(f"console {key}")

    def next_target(self, step_kmh: float) -> float:
        """The target after one +/- key: keys faster than a control tick add up."""
        now_ms = self.service.now_ms()
        base = self.service.state.target_kmh
        if self._target is not None and now_ms - self._target[1] < TARGET_KEYS_ADD_UP_MS:
            base = self._target[0]
        target = max(0.0, round(base + step_kmh, 2))
        self._target = (target, now_ms)
        return target

    def toggle_cable(self) -> None:
        """Unplug or plug the simulated USB cable to our firmware (none in key-relay mode)."""
        simulator = self.service.simulator
        if simulator is None or self.monitor:
            return
        from firmware_bridge.sim.firmware import SimFault  # noqa: PLC0415

        self.cable_plugged = not self.cable_plugged
        action = simulator.clear if self.cable_plugged else simulator.inject
        task = asyncio.get_running_loop().create_task(action(SimFault.DISCONNECT))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# ---------------------------------------------------------------------------- running


async def _wait_for(predicate: Callable[[], bool], run: asyncio.Task[int], what: str) -> bool:
    """Poll until ``predicate``; False if the service ended first. Raises on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    while not predicate():
        if run.done():
            return False
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {STARTUP_TIMEOUT_S:g} s waiting for {what}")
        await asyncio.sleep(0.005)  # polling the starting service
    return True


async def _interactive(demo: _Demo, run: asyncio.Task[int], out: TextIO) -> None:
    """Full-screen view and keys until the service stops."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    out.write(ALT_SCREEN_ON + HIDE_CURSOR)
    try:
        tty.setcbreak(fd)  # keys one by one, no echo; Ctrl-C still stops the demo (SIGINT)

        def on_key() -> None:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:  # end of input: quit
                demo.service.request_shutdown("end of terminal input")
                return
            for char in data.decode("utf-8", errors="ignore"):
                try:
                    demo.key(char)
                except Exception:  # a key must never take the demo down; log it
                    logger.exception("key %r failed", char)

        loop.add_reader(fd, on_key)
        try:
            while not run.done():
                width = shutil.get_terminal_size((100, 40)).columns
                lines = render_screen(demo.view(with_notes=True), width=width)
                out.write(screen_text(lines))
                out.flush()
                await asyncio.wait({run}, timeout=REFRESH_S)
        finally:
            loop.remove_reader(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write(SHOW_CURSOR + ALT_SCREEN_OFF)
        out.flush()


#: The built-in session without a terminal: (seconds after ready, action, words).
HEADLESS_SCRIPT: Final[tuple[tuple[float, str], ...]] = (
    (0.3, "stage 2"),
    (0.5, "grip both"),
    (1.0, "press start"),
    (1.2, "target 2.0"),
    (6.0, "grip none"),  # grip loss at stage 2: after 800 ms a controlled stop, fault latched
    (8.0, "grip both"),
    (10.0, "press reset"),  # at rest (the sensor reads 0 about 2 s after the last pulse)
    (11.0, "quit"),
)

#: The built-in session in key-relay mode (``--monitor``): mock-panel commands, ``console``
#: for the keys of the treadmill's own console.
HEADLESS_MONITOR_SCRIPT: Final[tuple[tuple[float, str], ...]] = (
    (0.3, "stage 1"),
    (0.5, "press start"),  # no hand on a rail at stage 1: START refused, the relay stays open
    (1.0, "grip both"),
    (1.5, "press start"),  # every start condition holds: the relay closes
    (2.0, "console start"),  # the person starts the belt at the console: 1.0 km/h
    (2.5, "console faster"),  # 1.5 km/h
    (5.0, "grip none"),  # grip loss at stage 1: after the 300 ms grace the relay opens
    (7.0, "grip both"),
    (8.5, "press reset"),  # at rest: the Pi's sensor reads 0 a second after the last pulse
    (9.0, "press start"),
    (9.5, "console start"),
    (10.0, "console faster"),
    (10.2, "console faster"),
    (10.4, "console faster"),  # 2.5 km/h: past the 2.0 km/h limit + 0.3 margin, relay opens
    (14.0, "quit"),
)

#: Events each built-in session must show, and in key-relay mode the faults it must latch.
EXPECTED_EVENTS: Final = frozenset({"started", "grip_lost", "fault", "fault_cleared"})
EXPECTED_MONITOR_EVENTS: Final = EXPECTED_EVENTS | {"start_refused"}
EXPECTED_MONITOR_FAULTS: Final = frozenset({"grip_lost", "overspeed"})


async def _headless(demo: _Demo, run: asyncio.Task[int], out: TextIO) -> bool:
    """Run the built-in session (:data:`HEADLESS_SCRIPT`, or :data:`HEADLESS_MONITOR_SCRIPT`
    in key-relay mode), printing plain state lines; True if it went as expected."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: set[str] = set()
    faults: set[str] = set()
    next_line = start
    script = list(HEADLESS_MONITOR_SCRIPT if demo.monitor else HEADLESS_SCRIPT)
    while not run.done():
        now = loop.time()
        while script and now - start >= script[0][0]:
            _at, action = script.pop(0)
            out.write(f"{now - start:6.1f} s  > {action}\n")
            if action == "quit":
                demo.service.request_shutdown("end of the demo session")
            else:
                answer = demo.panel.handle(action)
                if not answer.startswith("ok"):
                    out.write(f"{now - start:6.1f} s  {answer}\n")
        events, demo.pending_events = demo.pending_events, []
        for _now_ms, event in events:
            seen.add(event.kind)
            if event.kind == "fault":
                faults.add(str(event.details.get("code")))
            out.write(f"{now - start:6.1f} s  event {event.kind}: {event.message}\n")
        relay_lines, demo.relay.lines = demo.relay.lines, []
        for line in relay_lines:
            out.write(f"{now - start:6.1f} s  {line}\n")
        if now >= next_line:
            out.write(f"{now - start:6.1f} s  {render_line(demo.view(with_notes=False))}\n")
            next_line += PLAIN_EVERY_S
        out.flush()
        await asyncio.wait({run}, timeout=0.1)
    expected = EXPECTED_MONITOR_EVENTS if demo.monitor else EXPECTED_EVENTS
    missing = sorted(expected - seen)
    if demo.monitor:
        missing += [f"{code} fault" for code in sorted(EXPECTED_MONITOR_FAULTS - faults)]
    if missing:
        out.write(f"demo session incomplete: no {', '.join(missing)} event\n")
    return not missing


async def demo_session(
    service: Service,
    out: TextIO,
    *,
    broker: DemoBroker | None = None,
    socket_path: Path | None = None,
    interactive: bool = False,
) -> tuple[int, bool]:
    """Run ``service`` (built on :func:`demo_config`) with the demo's view or its built-in
    session until it stops; returns its exit status and whether the session went as
    expected. Works on a virtual clock (:mod:`controller.tools.virtual_time`) when the
    service and its simulator read the loop's clock."""
    config_socket = service.config.gpio.mock_socket
    socket = socket_path or Path(config_socket or "")
    demo = _Demo(service, broker, socket)
    run = asyncio.create_task(service.run(), name="demo-service")
    ok = True
    try:
        if await _wait_for(lambda: service.panel is not None, run, "the GPIO inputs"):
            demo.panel.reset_inputs()
        what = "the first control tick" if service.relay_mode else "the simulated firmware"
        if await _wait_for(service.ready.is_set, run, what):
            if interactive:
                await _interactive(demo, run, out)
            else:
                out.write("no terminal: running the built-in demo session\n")
                ok = await _headless(demo, run, out)
    finally:
        if not run.done():
            service.request_shutdown("demo ending")
        code = await run
    return code, ok
