"""End-to-end rig: ``treadmill run`` as a real process, observed at the firmware's end of the wire.

The rig owns the simulated firmware (:class:`~firmware_bridge.sim.pty.PtySimulator`, in this
process, on a real pseudo-terminal behind a stable symlink like ``/dev/serial/by-id/...``),
writes a config based on ``config/demo.yaml`` into a temporary folder, starts
``treadmill run --config`` as a subprocess with ``$NOTIFY_SOCKET`` pointing at a datagram
socket of its own, and drives the mock GPIO pins through the service's mock-panel socket.

Every frame the service sends is stamped with ``time.monotonic_ns()`` the moment the simulated
firmware decodes it (:class:`WireLog`): reaction times are measured where the motor controller
would see them, not inside the service. The benchmarks (``python -m bench``) and the fault
matrix (``tests/faults``) both use it::

    async with Rig(RigOptions()) as rig:
        await rig.start_belt(1.0)
        t0 = time.monotonic_ns()
        await rig.panel.command("estop pressed")
        frame = await rig.wire.wait_for((EStop,), after_ns=t0, timeout_s=1.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from firmware_bridge.sim.firmware import SimConfig
from firmware_bridge.sim.pty import PtySimulator
from firmware_bridge.wire.codec import Frame
from firmware_bridge.wire.messages import Message

__all__ = [
    "DEMO_CONFIG",
    "REPO",
    "BeltWatch",
    "MqttTarget",
    "NotifyListener",
    "PanelClient",
    "Rig",
    "RigError",
    "RigOptions",
    "ServiceProcess",
    "WireFrame",
    "WireLog",
    "bench_sim_config",
    "poll_until",
    "treadmill_argv",
    "write_service_config",
]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config" / "demo.yaml"
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
STANDSTILL_KMH = 0.1
_EVENT_LINE = re.compile(r" controller\.[a-z_.]+: ([a-z_]+): ")
_LOG_LINES_KEPT = 20_000


class RigError(RuntimeError):
    """The rig could not do what was asked; the message says what was seen (and the log)."""


# --------------------------------------------------------------------------------- waiting


async def poll_until(
    predicate: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.005
) -> None:
    """Poll ``predicate`` until it holds; :class:`RigError` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RigError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(poll_s)


# --------------------------------------------------------------------------------- the wire


@dataclass(frozen=True)
class WireFrame:
    """A frame from the service, as the simulated firmware decoded it at ``t_ns``."""

    t_ns: int  # time.monotonic_ns() in this process when the firmware decoded it
    seq: int
    message: Message


class WireLog:
    """Every frame the service sends, stamped on arrival (install as ``on_host_frame``)."""

    def __init__(self, maxlen: int = 500_000) -> None:
        self.frames: deque[WireFrame] = deque(maxlen=maxlen)
        self._waiters: list[tuple[tuple[type[Message], ...], int, asyncio.Future[WireFrame]]] = []

    def on_host_frame(self, frame: Frame, now_ms: int) -> None:
        """Called by :class:`~firmware_bridge.sim.firmware.SimFirmware` for each host frame."""
        del now_ms  # the firmware's millisecond clock; we stamp in nanoseconds instead
        entry = WireFrame(time.monotonic_ns(), frame.seq, frame.message)
        self.frames.append(entry)
        if self._waiters:
            for kinds, after_ns, future in self._waiters:
                if (
                    not future.done()
                    and entry.t_ns >= after_ns
                    and isinstance(entry.message, kinds)
                ):
                    future.set_result(entry)

    def first_since(self, kinds: tuple[type[Message], ...], after_ns: int) -> WireFrame | None:
        """The first logged frame of ``kinds`` stamped at or after ``after_ns``."""
        found: WireFrame | None = None
        for entry in reversed(self.frames):
            if entry.t_ns < after_ns:
                break
            if isinstance(entry.message, kinds):
                found = entry
        return found

    def since(self, after_ns: int) -> list[WireFrame]:
        """Every logged frame stamped at or after ``after_ns``, oldest first."""
        out: list[WireFrame] = []
        for entry in reversed(self.frames):
            if entry.t_ns < after_ns:
                break
            out.append(entry)
        out.reverse()
        return out

    async def wait_for(
        self, kinds: tuple[type[Message], ...], *, after_ns: int, timeout_s: float
    ) -> WireFrame | None:
        """The first frame of ``kinds`` at or after ``after_ns``; None after ``timeout_s``."""
        found = self.first_since(kinds, after_ns)
        if found is not None:
            return found
        future: asyncio.Future[WireFrame] = asyncio.get_running_loop().create_future()
        waiter = (kinds, after_ns, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout=timeout_s)
        except TimeoutError:
            return None
        finally:
            self._waiters.remove(waiter)


# --------------------------------------------------------------------------------- systemd


class NotifyListener:
    """Stands in for systemd's notify socket: keeps every datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)
        self.messages: list[tuple[int, str]] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._drain)

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(4096)
            except BlockingIOError:
                return
            self.messages.append((time.monotonic_ns(), data.decode(errors="replace")))

    def first(self, line: str) -> int | None:
        """Arrival time (monotonic ns) of the first datagram holding ``line``, or None."""
        self._drain()
        for t_ns, text in self.messages:
            if line in text.split("\n"):
                return t_ns
        return None

    def count(self, line: str) -> int:
        self._drain()
        return sum(line in text.split("\n") for _, text in self.messages)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


# --------------------------------------------------------------------------------- mock panel


class PanelClient:
    """One connection to the service's mock-panel socket; commands are sent one at a time."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self.last_rtt_ns = 0

    async def open(self, path: Path) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(
            str(path), limit=4 * 1024 * 1024
        )

    async def command(self, line: str, *, timeout_s: float = 5.0) -> str:
        """Send one command line; returns the one-line answer (``ok ...`` or ``error ...``)."""
        if self._reader is None or self._writer is None:
            raise RigError("the mock-panel connection is not open")
        async with self._lock:
            start_ns = time.monotonic_ns()
            self._writer.write(line.encode() + b"\n")
            answer = await asyncio.wait_for(self._reader.readline(), timeout=timeout_s)
            self.last_rtt_ns = time.monotonic_ns() - start_ns
        if not answer:
            raise RigError(f"mock panel closed the connection after {line!r}")
        return answer.decode().strip()

    async def ok(self, line: str) -> None:
        """Send a command that must succeed."""
        answer = await self.command(line)
        if answer != "ok" and not answer.startswith("ok "):
            raise RigError(f"mock panel refused {line!r}: {answer}")

    async def status(self) -> dict[str, Any]:
        """The service's state payload (docs/mqtt.md), including ``link.loop`` stats."""
        answer = await self.command("status")
        if not answer.startswith("ok "):
            raise RigError(f"mock panel 'status' failed: {answer}")
        payload: dict[str, Any] = json.loads(answer[3:])
        return payload

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
            self._reader = None


# --------------------------------------------------------------------------------- the process


def treadmill_argv() -> list[str]:
    """``treadmill`` from this interpreter's environment (``python -m controller.cli`` else)."""
    script = Path(sys.executable).with_name("treadmill")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "controller.cli"]


def proc_cpu_s(pid: int) -> float:
    """CPU time of process ``pid`` so far (utime + stime, /proc/<pid>/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStats:
    """CPU time and memory of a process from /proc."""

    cpu_s: float  # user + system
    rss_kb: int
    hwm_kb: int  # peak resident set size (VmHWM)


class ServiceProcess:
    """``treadmill run --config PATH`` as a subprocess; stderr is read and kept (bounded)."""

    def __init__(
        self, config_path: Path, env: dict[str, str], launcher: tuple[str, ...] | None = None
    ) -> None:
        self.config_path = config_path
        self.env = env
        self.launcher = launcher if launcher is not None else tuple(treadmill_argv())
        self.proc: asyncio.subprocess.Process | None = None
        self.spawn_ns = 0
        self.lines: deque[str] = deque(maxlen=_LOG_LINES_KEPT)
        self.kinds: Counter[str] = Counter()
        self.line_count = 0
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.spawn_ns = time.monotonic_ns()
        self.proc = await asyncio.create_subprocess_exec(
            *self.launcher,
            "run",
            "--config",
            str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=str(REPO),
        )
        self._stderr_task = asyncio.create_task(self._read_stderr(), name="service-stderr")

    async def _read_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        stream = self.proc.stderr
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line above the stream limit: keep reading
                raw = await stream.read(65536)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\n")
            self.line_count += 1
            self.lines.append(line)
            match = _EVENT_LINE.search(line)
            if match:
                self.kinds[match.group(1)] += 1

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RigError("the service process has not been started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def log(self, last: int = 200) -> str:
        """The last ``last`` lines of the service's log."""
        return "\n".join(list(self.lines)[-last:])

    def log_has(self, fragment: str) -> bool:
        return any(fragment in line for line in self.lines)

    def signal(self, signum: signal.Signals) -> None:
        if self.proc is None or self.proc.returncode is not None:
            raise RigError(f"cannot send {signum.name}: the service is not running")
        self.proc.send_signal(signum)

    def proc_stats(self) -> ProcStats:
        """CPU time (utime + stime) and VmRSS / VmHWM of the running service."""
        pid = self.pid
        cpu_s = proc_cpu_s(pid)
        rss_kb = hwm_kb = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm_kb = int(line.split()[1])
        return ProcStats(cpu_s=cpu_s, rss_kb=rss_kb, hwm_kb=hwm_kb)

    async def wait(self, timeout_s: float) -> int:
        if self.proc is None:
            raise RigError("the service process has not been started")
        code = await asyncio.wait_for(self.proc.wait(), timeout=timeout_s)
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stderr_task, timeout=5)
        return code

    async def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (the service stops the belt first), SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a frozen service cannot act on SIGTERM
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=timeout_s)
            except TimeoutError:
                logger.warning("service did not exit %.0f s after SIGTERM: SIGKILL", timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._stderr_task, timeout=5)
        return proc.returncode


# --------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class MqttTarget:
    """Where the service's MQTT publisher connects (a dead port for "broker down")."""

    host: str
    port: int
    credentials_file: Path | None = None


def write_service_config(
    directory: Path,
    *,
    port: str,
    mock_socket: Path,
    mqtt: MqttTarget | None,
    training: bool,
    edit: Callable[[dict[str, Any]], None] | None = None,
    log_level: str = "INFO",
) -> Path:
    """A config based on config/demo.yaml with a private state dir; MQTT off unless given."""
    raw: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text())
    state_dir = directory / "state"
    state_dir.mkdir(exist_ok=True)
    raw["serial"]["port"] = port
    # The simulator runs in this process, the service in another: the Pi belt sensor's pulses
    # cannot reach the service's mock pins, so the rig measures the one-channel controller.
    raw.pop("belt_sensor", None)
    raw["state_dir"] = str(state_dir)
    raw["gpio"]["mock_socket"] = str(mock_socket)
    raw["logging"] = {"level": log_level, "format": "plain"}
    if mqtt is None:
        raw["mqtt"] = {"enabled": False}
    else:
        raw["mqtt"]["host"] = mqtt.host
        raw["mqtt"]["port"] = mqtt.port
        raw["mqtt"]["credentials_file"] = (
            str(mqtt.credentials_file) if mqtt.credentials_file else None
        )
        raw["mqtt"]["topic_prefix"] = "treadmill/{id}"
    raw["training"] = {"enabled": training}
    if edit is not None:
        edit(raw)
    path = directory / "treadmill.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def bench_sim_config(*, self_checks: bool = True) -> SimConfig:
    """The simulated treadmill used by the benchmarks and the fault matrix: the stock one.

    Its speed sensor has 20 magnets on the front roller (12.5 mm of belt per pulse, FW-15 in
    docs/firmware-safety.md), so a stopped belt reads 0 within a fraction of a second even at
    the 0.5 km/h start speed. ``self_checks=False`` models a firmware without its own
    plausibility checks (the fault matrix's broken-firmware rows).
    """
    return SimConfig(self_checks=self_checks)


# --------------------------------------------------------------------------------- the rig


@dataclass(frozen=True)
class RigOptions:
    """How to build one rig."""

    mqtt: MqttTarget | None = None
    training: bool = False
    sim_config: SimConfig | None = None  # None: bench_sim_config()
    seed: int = 1
    edit: Callable[[dict[str, Any]], None] | None = None
    log_level: str = "INFO"
    ready_timeout_s: float = 30.0
    workdir: Path | None = None  # None: a fresh temporary folder, removed afterwards
    prepare: Callable[[Path], None] | None = None  # called with state_dir before the start
    extra_env: dict[str, str] = field(default_factory=dict)
    # How to start the service, before "run --config PATH"; None: the `treadmill` script.
    # E.g. (sys.executable, "-m", "cProfile", "-o", "out.prof", "-m", "controller.cli").
    launcher: tuple[str, ...] | None = None


class Rig:
    """The service under test, its simulated firmware and the probes on both (async CM)."""

    def __init__(self, options: RigOptions | None = None) -> None:
        self.options = options if options is not None else RigOptions()
        self.workdir = Path("/nonexistent")
        self._own_workdir = False
        self.wire = WireLog()
        self.sim: PtySimulator | None = None
        self.notify: NotifyListener | None = None
        self.process: ServiceProcess | None = None
        self.panel = PanelClient()
        self.config_path = Path("/nonexistent")
        self.mock_socket = Path("/nonexistent")
        self.ready_ns: int | None = None

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open(self) -> None:
        opts = self.options
        if opts.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="treadmill-rig-"))
            self._own_workdir = True
        else:
            self.workdir = opts.workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        port = await self._start_firmware()
        self.mock_socket = self.workdir / "gpio.sock"
        self.config_path = write_service_config(
            self.workdir,
            port=port,
            mock_socket=self.mock_socket,
            mqtt=opts.mqtt,
            training=opts.training,
            edit=opts.edit,
            log_level=opts.log_level,
        )
        if opts.prepare is not None:
            opts.prepare(self.workdir / "state")
        self.notify = NotifyListener(self.workdir / "notify.sock")
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1")
        env.update(opts.extra_env)
        self.process = ServiceProcess(self.config_path, env, opts.launcher)
        await self.process.start()
        await self.wait_ready(opts.ready_timeout_s)
        await poll_until(self.mock_socket.exists, timeout_s=10, what="the mock-panel socket")
        await self.panel.open(self.mock_socket)

    async def _start_firmware(self) -> str:
        """Start the firmware the service talks to; returns the port to give the service."""
        opts = self.options
        sim_config = opts.sim_config if opts.sim_config is not None else bench_sim_config()
        self.sim = PtySimulator(sim_config, seed=opts.seed, link_path=self.workdir / "ttyFW")
        await self.sim.__aenter__()
        self.sim.firmware.on_host_frame = self.wire.on_host_frame
        return self.sim.port

    async def _stop_firmware(self) -> None:
        if self.sim is not None:
            await self.sim.aclose()

    async def wait_ready(self, timeout_s: float) -> int:
        """Wait for READY=1; returns its arrival time (monotonic ns)."""
        notify, process = self.notify, self.process
        assert notify is not None
        assert process is not None
        deadline = time.monotonic() + timeout_s
        while (ready := notify.first("READY=1")) is None:
            if process.returncode is not None:
                raise RigError(
                    f"the service exited with {process.returncode} before READY=1:\n{process.log()}"
                )
            if time.monotonic() > deadline:
                raise RigError(f"no READY=1 within {timeout_s} s:\n{process.log()}")
            await asyncio.sleep(0.002)
        self.ready_ns = ready
        return ready

    async def close(self) -> None:
        """Stop the service (SIGTERM first), the simulator, and remove the temp folder."""
        await self.panel.close()
        if self.process is not None:
            await self.process.stop()
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        await self._stop_firmware()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._own_workdir = False

    # ------------------------------------------------------------------ probes

    @property
    def simulator(self) -> PtySimulator:
        if self.sim is None:
            raise RigError("the rig is not open")
        return self.sim

    @property
    def service(self) -> ServiceProcess:
        if self.process is None:
            raise RigError("the rig is not open")
        return self.process

    @property
    def belt_kmh(self) -> float:
        """The true belt speed (km/h) of the simulated treadmill."""
        return float(self.simulator.firmware.true_speed_kmh)

    @property
    def measured_kmh(self) -> float:
        """What the simulated speed sensor reads (km/h)."""
        return float(self.simulator.firmware.measured_kmh)

    async def status(self) -> dict[str, Any]:
        return await self.panel.status()

    async def wait_status(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout_s: float,
        what: str,
        poll_s: float = 0.02,
    ) -> dict[str, Any]:
        """Poll the service's state until ``predicate`` holds; returns that state."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.status()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise RigError(
                    f"timed out after {timeout_s} s waiting for {what}; last state: "
                    f"mode={state.get('state')} fault={state.get('fault')} "
                    f"grip={state.get('grip')} firmware={state.get('firmware')}\n"
                    f"{self.service.log(40)}"
                )
            await asyncio.sleep(poll_s)

    async def wait_belt(
        self, predicate: Callable[[float], bool], *, timeout_s: float, what: str
    ) -> None:
        """Poll the true belt speed until ``predicate(speed_kmh)`` holds."""
        await poll_until(lambda: predicate(self.belt_kmh), timeout_s=timeout_s, what=what)

    # ------------------------------------------------------------------ console actions

    async def grip_held(self) -> None:
        """Both hands on the rails, and wait until the controller sees it (debounce)."""
        await self.panel.ok("grip both")
        await self.wait_status(
            lambda s: s["grip"] == "both", timeout_s=5, what="grip both", poll_s=0.01
        )

    async def start_belt(self, target_kmh: float | None = None, *, timeout_s: float = 30) -> None:
        """Grip, START, optionally a new target; wait until the belt runs at its target."""
        await self.grip_held()
        if target_kmh is not None:
            await self.panel.ok(f"target {target_kmh}")
        started = time.monotonic()
        await self.panel.ok("press start")
        state = await self.wait_status(
            lambda s: s["state"] == "running", timeout_s=5, what="RUNNING after START"
        )
        goal = float(state["target_kmh"])
        # Until the belt is at its target, or the controller has left RUNNING (a fault: no
        # point waiting out the timeout), whichever comes first.
        while (belt_kmh := self.belt_kmh) < goal - 0.05:
            state = await self.status()
            if state["state"] != "running" or time.monotonic() - started > timeout_s:
                raise RigError(
                    f"the belt did not reach {goal} km/h: {belt_kmh:.2f} km/h after "
                    f"{time.monotonic() - started:.1f} s; mode={state['state']} "
                    f"fault={state['fault']} firmware={state['firmware']}\n{self.service.log(40)}"
                )
            await asyncio.sleep(0.01)

    async def to_idle(self, *, timeout_s: float = 20.0) -> None:
        """Back to a ready console: e-stop out, key in, hands on, belt at rest, faults reset."""
        sim = self.simulator
        await self.panel.ok("estop released")
        await self.panel.ok("key inserted")
        sim.set_safety_key(True)
        await self.panel.ok("grip both")
        await self.wait_belt(lambda v: v <= 0.0, timeout_s=timeout_s, what="belt at rest")
        await poll_until(
            lambda: self.measured_kmh <= STANDSTILL_KMH,
            timeout_s=timeout_s,
            what="speed sensor reading rest",
        )
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.status()
            if state["state"] == "idle" and state["firmware"]["state"] == "idle":
                return
            if time.monotonic() > deadline:
                raise RigError(f"not back to idle within {timeout_s} s: {state}")
            if state["state"] == "faulted" or state["firmware"]["state"] == "fault":
                await self.panel.ok("press reset")
                # The console locks a button out for 150 ms against contact bounce.
                await asyncio.sleep(0.17)
            else:
                await asyncio.sleep(0.01)

    def watch_belt(self, period_s: float = 0.002) -> BeltWatch:
        """Start sampling the true belt speed in the background (see :class:`BeltWatch`)."""
        return BeltWatch(self, period_s)


class BeltWatch:
    """Samples the simulated belt: peak speed, distance travelled, when it came to rest."""

    def __init__(self, rig: Rig, period_s: float) -> None:
        self._rig = rig
        self._period_s = period_s
        self.samples: list[tuple[int, float]] = []  # (monotonic ns, true km/h)
        self.start_distance_m = rig.simulator.firmware.physics.distance_m
        self._task = asyncio.create_task(self._run(), name="belt-watch")

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic_ns(), self._rig.belt_kmh))
            await asyncio.sleep(self._period_s)

    def peak_kmh(self, after_ns: int = 0) -> float:
        return max((v for t, v in self.samples if t >= after_ns), default=0.0)

    def distance_m(self) -> float:
        """Belt travel since the watch started (m), from the simulator's odometer."""
        return self._rig.simulator.firmware.physics.distance_m - self.start_distance_m

    def rest_after(self, after_ns: int, standstill_kmh: float = STANDSTILL_KMH) -> int | None:
        """First sample time at or after ``after_ns`` from which the belt stayed at or below
        ``standstill_kmh`` until the last sample; None if it is not at rest now."""
        rest: int | None = None
        for t_ns, v in self.samples:
            if t_ns < after_ns:
                continue
            if v <= standstill_kmh:
                if rest is None:
                    rest = t_ns
            else:
                rest = None
        return rest

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def with_timeout(awaitable: Awaitable[Any], timeout_s: float, what: str) -> Any:
    """Await ``awaitable`` for at most ``timeout_s``; :class:`RigError` naming ``what``."""
    try:
        return await asyncio.wait_for(awaitable, timeout=timeout_s)
    except TimeoutError as exc:
        raise RigError(f"timed out after {timeout_s} s waiting for {what}") from exc
