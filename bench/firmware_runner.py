"""Run one firmware implementation as a process and talk to it as the controller would.

Used by the conformance suite (tests/conformance) and the emulated-chip measurements
(bench/firmware_emu.py).

Every implementation of docs/firmware-safety.md follows the same process interface
(docs/firmware.md, "One contract, three implementations"): the first line on stdout is
``PTY <path>``, run-time commands go to stdin one a line and each gets a one-line answer
starting with ``OK`` or ``ERR``. :class:`FirmwareProcess` drives that interface;
:class:`Link` is the host end of the wire on the pseudo-terminal, speaking the project's
codec (``firmware_bridge.wire.codec`` / ``messages``). Both are synchronous with reader threads, so
one process per implementation can serve a whole test module. Waiting is always on a
condition with a timeout (:func:`wait_until_sync`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from firmware_bridge.sim.cli import EMU_BINARY, NATIVE_BINARY
from firmware_bridge.wire.codec import Frame, FrameDecoder, encode_frame
from firmware_bridge.wire.messages import (
    Ack,
    Configure,
    EStop,
    FwFault,
    FwState,
    Hello,
    Message,
    Nak,
    NakReason,
    SetSpeed,
    Status,
    host_hello,
)

__all__ = [
    "FEATURES",
    "STANDSTILL_KMH",
    "FirmwareProcess",
    "Implementation",
    "Link",
    "RunnerError",
    "Rx",
    "Session",
    "implementations",
    "session",
    "start_session",
    "wait_until_sync",
]

REPO = Path(__file__).resolve().parents[1]
FIRMWARE_ELF = REPO / "firmware" / "build" / "treadmill.elf"
STANDSTILL_KMH = 0.1
TICK_S = 0.02  # the controller's SET_SPEED period (50 Hz)


class RunnerError(AssertionError):
    """The firmware process did not do what the interface promises (says what was seen)."""


def wait_until_sync(
    predicate: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.005
) -> None:
    """Poll ``predicate`` until it is true; :class:`RunnerError` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RunnerError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


# --------------------------------------------------------------------------- implementations


@dataclass(frozen=True)
class Implementation:
    """One implementation of the firmware contract and how to start it.

    ``missing`` says why it cannot run on this machine (None: it can). ``features`` names
    what only some implementations can show (see :data:`FEATURES`).
    """

    name: str
    argv: tuple[str, ...]
    missing: str | None = None
    features: frozenset[str] = field(default_factory=frozenset)


#: Behaviours not every implementation has, with the reason for those without them.
FEATURES = {
    "watchdog": "only the AVR has a hardware watchdog to reset a hung main loop (FW-12)",
    "isr_timing": "only the emulated chip has interrupts whose duration can be measured",
}


def implementations() -> list[Implementation]:
    """The three implementations, each with why it cannot run here (if it cannot)."""
    python = Implementation("python", (sys.executable, "-m", "controller.cli", "sim"))
    native_missing = None
    if not NATIVE_BINARY.exists():
        native_missing = f"{NATIVE_BINARY.relative_to(REPO)} is not built (make -C firmware native)"
    native = Implementation("native", (str(NATIVE_BINARY),), native_missing)
    avr_missing = None
    if not FIRMWARE_ELF.exists():
        avr_missing = f"{FIRMWARE_ELF.relative_to(REPO)} is not built (make -C firmware)"
    elif not EMU_BINARY.exists():
        avr_missing = f"{EMU_BINARY.relative_to(REPO)} is not built (make -C firmware/emu)"
    avr = Implementation(
        "avr",
        (str(EMU_BINARY), str(FIRMWARE_ELF)),
        avr_missing,
        frozenset({"watchdog", "isr_timing"}),
    )
    return [python, native, avr]


# --------------------------------------------------------------------------- the process


class FirmwareProcess:
    """A firmware runner process: its ``PTY`` line, stdin commands and their answers."""

    def __init__(self, impl: Implementation, *, start_timeout_s: float = 30.0) -> None:
        self.impl = impl
        self._lines: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self.pty_path: str | None = None
        self._pty_lines = 0
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The argv comes from implementations(): this repository's own programs.
        self.proc = subprocess.Popen(
            impl.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=str(REPO),
            env=env,
        )
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._read_stdout, name=f"{impl.name}-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, name=f"{impl.name}-stderr", daemon=True).start()
        wait_until_sync(
            lambda: self.pty_path is not None or self.proc.poll() is not None,
            timeout_s=start_timeout_s,
            what=f"the PTY line of {impl.name}",
        )
        if self.pty_path is None:
            raise RunnerError(
                f"{impl.name} exited with {self.proc.returncode} before printing PTY:\n"
                + self.log()
            )

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            if line.startswith("PTY "):
                with self._lock:
                    self.pty_path = line[4:].strip()
                    self._pty_lines += 1
            elif line:
                self._lines.put(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr_lines.append(raw.rstrip("\n"))
            del self.stderr_lines[:-200]

    @property
    def pty_lines(self) -> int:
        """How many ``PTY`` lines were printed (a re-plug prints a new one)."""
        with self._lock:
            return self._pty_lines

    def log(self) -> str:
        return "\n".join(self.stderr_lines[-40:])

    def command(self, line: str, *, timeout_s: float = 5.0) -> str:
        """Send one stdin command; the one-line answer (``OK ...`` or ``ERR ...``)."""
        if self.proc.poll() is not None:
            raise RunnerError(
                f"{self.impl.name} has exited ({self.proc.returncode}):\n{self.log()}"
            )
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        try:
            answer = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise RunnerError(
                f"{self.impl.name}: no answer to {line!r} within {timeout_s} s\n{self.log()}"
            ) from None
        if not (answer.startswith("OK") or answer.startswith("ERR")):
            raise RunnerError(f"{self.impl.name}: {line!r} answered {answer!r}")
        return answer

    def ok(self, line: str) -> str:
        answer = self.command(line)
        if not answer.startswith("OK"):
            raise RunnerError(f"{self.impl.name} refused {line!r}: {answer}")
        return answer

    def status(self) -> dict[str, str]:
        """The ``status`` answer as key=value pairs (belt_kmh, duty_pct, motor_enabled ...)."""
        answer = self.ok("status")
        return dict(word.split("=", 1) for word in answer.split() if "=" in word)

    def belt_kmh(self) -> float:
        return float(self.status()["belt_kmh"])

    def wait_status(
        self, predicate: Callable[[dict[str, str]], bool], *, timeout_s: float, what: str
    ) -> dict[str, str]:
        """Poll ``status`` until ``predicate`` holds; returns that status."""
        last: dict[str, str] = {}

        def check() -> bool:
            nonlocal last
            last = self.status()
            return predicate(last)

        try:
            wait_until_sync(check, timeout_s=timeout_s, what=what, poll_s=0.02)
        except AssertionError as exc:
            raise RunnerError(f"{self.impl.name}: {exc}; last status {last}") from None
        return last

    def close(self) -> int:
        """SIGTERM and wait (the interface promises exit 0); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- the wire


@dataclass(frozen=True)
class Rx:
    """A frame from the firmware and when it arrived (time.monotonic())."""

    t_s: float
    frame: Frame

    @property
    def message(self) -> Message:
        return self.frame.message


class Link:
    """The host end of the wire: frames out with our own SEQ, every frame in kept and stamped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self._decoder = FrameDecoder()
        self._cond = threading.Condition()
        self.rx: list[Rx] = []
        self._seq = 0
        self._closed = False
        self._renew: threading.Thread | None = None
        self._renew_stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"link-{path}", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ plumbing

    def _read(self) -> None:
        while not self._closed:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return  # closed, or the cable was pulled
            if not data:
                return
            now = time.monotonic()
            frames = self._decoder.feed(data)
            if frames:
                with self._cond:
                    self.rx.extend(Rx(now, f) for f in frames)
                    self._cond.notify_all()

    def close(self) -> None:
        self.stop_renewing()
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def mark(self) -> int:
        """An index into :attr:`rx`: frames received from now on are at or after it."""
        with self._cond:
            return len(self.rx)

    def next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % 256
        return seq

    def send(self, msg: Message, *, seq: int | None = None) -> int:
        """Send ``msg`` (a new SEQ unless given); returns the SEQ used."""
        use = self.next_seq() if seq is None else seq
        self.write(encode_frame(use, msg))
        return use

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    # ------------------------------------------------------------------ waiting

    def wait_rx(
        self, predicate: Callable[[Rx], bool], *, after: int, timeout_s: float, what: str
    ) -> Rx:
        """The first frame at index ``after`` or later that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            index = after
            while True:
                while index < len(self.rx):
                    item = self.rx[index]
                    index += 1
                    if predicate(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [
                        str(r.message) if isinstance(r.message, Nak) else type(r.message).__name__
                        for r in self.rx[-6:]
                    ]
                    raise RunnerError(f"timed out after {timeout_s} s waiting for {what}; {tail}")
                self._cond.wait(left)

    def frames_since(self, after: int) -> list[Rx]:
        with self._cond:
            return list(self.rx[after:])

    def answer(self, seq: int, *, after: int, timeout_s: float = 1.0) -> Ack | Nak:
        """The ACK or NAK quoting ``seq`` (received at index ``after`` or later)."""
        rx = self.wait_rx(
            lambda r: isinstance(r.message, Ack | Nak) and r.message.seq == seq,
            after=after,
            timeout_s=timeout_s,
            what=f"an ACK/NAK of seq {seq}",
        )
        assert isinstance(rx.message, Ack | Nak)
        return rx.message

    def request(self, msg: Message, *, seq: int | None = None, timeout_s: float = 1.0) -> Ack | Nak:
        """Send ``msg`` and return its ACK or NAK."""
        after = self.mark()
        used = self.send(msg, seq=seq)
        return self.answer(used, after=after, timeout_s=timeout_s)

    def nak(self, msg: Message, *, seq: int | None = None) -> NakReason:
        """Send ``msg``, which must be refused; the NAK reason."""
        answer = self.request(msg, seq=seq)
        if not isinstance(answer, Nak):
            raise RunnerError(f"{msg} was ACKed, expected a NAK")
        return answer.reason

    def status(self, predicate: Callable[[Status], bool], *, timeout_s: float, what: str) -> Status:
        """The first STATUS from now on that satisfies ``predicate``."""
        after = self.mark()
        rx = self.wait_rx(
            lambda r: isinstance(r.message, Status) and predicate(r.message),
            after=after,
            timeout_s=timeout_s,
            what=what,
        )
        assert isinstance(rx.message, Status)
        return rx.message

    def latest_status(self, *, timeout_s: float = 1.0) -> Status:
        return self.status(lambda s: True, timeout_s=timeout_s, what="a STATUS")

    def hello_after(self, after: int, *, timeout_s: float) -> Hello:
        rx = self.wait_rx(
            lambda r: isinstance(r.message, Hello),
            after=after,
            timeout_s=timeout_s,
            what="the firmware's HELLO",
        )
        assert isinstance(rx.message, Hello)
        return rx.message

    # ------------------------------------------------------------------ the host's steps

    def handshake(self) -> Hello:
        """Host HELLO with our protocol version; the firmware's answering HELLO."""
        after = self.mark()
        answer = self.request(host_hello())
        if not isinstance(answer, Ack):
            raise RunnerError(f"host HELLO answered {answer}")
        return self.hello_after(after, timeout_s=1.0)

    def configure(self, config: Configure) -> None:
        answer = self.request(config)
        if not isinstance(answer, Ack):
            raise RunnerError(f"{config} answered {answer}")
        self.status(
            lambda s: s.config_checksum == config.config_checksum,
            timeout_s=1.0,
            what="STATUS echoing the configuration checksum",
        )

    def start_renewing(self, speed_kmh: float, accel_kmh_s: float, lease_ms: int) -> None:
        """Play the controller: a fresh SET_SPEED every 20 ms until :meth:`stop_renewing`."""
        self.stop_renewing()
        self._renew_stop.clear()
        msg = SetSpeed(speed_kmh=speed_kmh, accel_kmh_s=accel_kmh_s, lease_ms=lease_ms)

        def run() -> None:
            next_t = time.monotonic()
            while not self._renew_stop.is_set():
                with contextlib.suppress(OSError):
                    self.send(msg)
                next_t += TICK_S
                self._renew_stop.wait(max(0.0, next_t - time.monotonic()))

        self._renew = threading.Thread(target=run, name="set-speed-ticks", daemon=True)
        self._renew.start()

    def stop_renewing(self) -> None:
        """Stop sending SET_SPEED; returns once the last one is on the wire."""
        thread, self._renew = self._renew, None
        if thread is not None:
            self._renew_stop.set()
            thread.join(timeout=2)


# --------------------------------------------------------------------------- one session


@dataclass
class Session:
    """One implementation under test: its process, the wire and its compiled-in ceilings."""

    impl: Implementation
    process: FirmwareProcess
    link: Link
    hello: Hello  # the firmware's HELLO of the present boot
    pty_seen: int = 1  # PTY lines the link has followed

    @property
    def name(self) -> str:
        return self.impl.name

    def has(self, feature: str) -> bool:
        return feature in self.impl.features

    def reconnect(self) -> None:
        """Re-open the wire (after the pty changed)."""
        self.link.close()
        assert self.process.pty_path is not None
        self.link = Link(self.process.pty_path)
        self.pty_seen = self.process.pty_lines

    def belt_at_rest(self, *, timeout_s: float = 10.0) -> None:
        self.process.wait_status(
            lambda s: float(s["belt_kmh"]) <= 0.01,
            timeout_s=timeout_s,
            what="the belt at rest",
        )

    def reboot(self) -> Hello:
        """Reset the firmware (``inject reboot``) and wait for its HELLO and IDLE."""
        after = self.link.mark()
        self.process.ok("inject reboot")
        self.hello = self.link.hello_after(after, timeout_s=5.0)
        self.link.status(lambda s: s.state is FwState.IDLE, timeout_s=5.0, what="IDLE after boot")
        return self.hello

    def fresh(self) -> None:
        """Back to a freshly booted firmware: no injected faults, key closed, belt at rest."""
        self.link.stop_renewing()
        for fault in ("sensor_freeze", "runaway", "stuck_speed", "disconnect"):
            self.process.ok(f"clear {fault}")
        if self.process.pty_lines != self.pty_seen:
            self.reconnect()
        self.process.ok("key closed")
        if float(self.process.status()["belt_kmh"]) > 0.01:
            self.link.request(EStop())
            self.belt_at_rest()
        self.reboot()

    def ready(self, config: Configure) -> None:
        """Handshake and CONFIGURE, as the controller does before any motion."""
        self.link.handshake()
        self.link.configure(config)

    def run_at(
        self, speed_kmh: float, *, accel_kmh_s: float, lease_ms: int, timeout_s: float = 15.0
    ) -> Status:
        """Renew SET_SPEED every tick and wait until the sensor reads the speed."""
        self.link.start_renewing(speed_kmh, accel_kmh_s, lease_ms)
        return self.link.status(
            lambda s: s.state is FwState.RUNNING and s.measured_kmh >= speed_kmh - 0.15,
            timeout_s=timeout_s,
            what=f"the belt measured at {speed_kmh} km/h",
        )

    def fault_latched(self, fault: FwFault, *, timeout_s: float) -> Status:
        return self.link.status(
            lambda s: s.state is FwState.FAULT and s.fault is fault,
            timeout_s=timeout_s,
            what=f"FAULT {fault.name}",
        )


def start_session(impl: Implementation) -> Session:
    process = FirmwareProcess(impl)
    assert process.pty_path is not None
    link = Link(process.pty_path)
    # The boot HELLO may have gone out before the port was open: reboot to see one.
    after = link.mark()
    process.ok("inject reboot")
    hello = link.hello_after(after, timeout_s=10.0)
    return Session(impl, process, link, hello)


@contextlib.contextmanager
def session(impl: Implementation) -> Iterator[Session]:
    s = start_session(impl)
    try:
        yield s
    finally:
        s.link.close()
        code = s.process.close()
        if code != 0:
            raise RunnerError(f"{impl.name} exited with {code} on SIGTERM:\n{s.process.log()}")
