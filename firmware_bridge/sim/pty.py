"""The simulated firmware behind a real pseudo-terminal.

:class:`PtySimulator` opens a pty pair, puts the slave in raw mode and serves the simulated
firmware (:class:`~firmware_bridge.sim.firmware.SimFirmware`) on the master side, inside the
running event loop. The controller opens :attr:`PtySimulator.port` exactly as it opens a real
serial port, so tests, the demo and the scenario runner drive the real bridge code.

Unplugging is simulated by closing the master (:meth:`PtySimulator.disconnect`): reads on the
slave then fail with ``EIO`` the way a USB adapter's do. A re-plug (:meth:`reconnect`) makes a
new pty, which has a new ``/dev/pts/N`` path; give ``link_path`` to get a stable symlink that
always points at the current pty, like ``/dev/serial/by-id/...`` does for a USB adapter (the
link is removed while unplugged, as udev does).

Example::

    async with PtySimulator(seed=1, link_path=state_dir / "firmware.tty") as sim:
        bridge = FirmwareBridge(sim.port, baud=115200, limits=limits, clock_ms=clock_ms)
        ...
        await sim.inject(SimFault.CORRUPT_BYTES, pct=5)
        await sim.disconnect()  # the bridge sees an unplug
        await sim.reconnect()   # same link path, new /dev/pts/N
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from firmware_bridge.sim.firmware import SimConfig, SimFault, SimFirmware

__all__ = ["PtySimulator"]

_LOG = logging.getLogger(__name__)
_READ_CHUNK = 4096


def _log_crash(task: asyncio.Task[None]) -> None:
    """Say at once when the simulated firmware dies (``aclose()`` re-raises it later)."""
    if not task.cancelled() and task.exception() is not None:
        _LOG.error("sim: firmware task %s crashed", task.get_name(), exc_info=task.exception())


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class PtySimulator:
    """Serve a :class:`SimFirmware` on a pseudo-terminal (async context manager).

    ``tick_ms`` is how often the firmware's :meth:`~SimFirmware.tick` runs (its STATUS rate is
    set in :class:`SimConfig`). ``clock_ms`` must be the same monotonic millisecond clock the
    bridge uses when the two are compared (default: ``time.monotonic_ns() // 1_000_000``).
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        seed: int = 0,
        link_path: str | os.PathLike[str] | None = None,
        clock_ms: Callable[[], int] = _monotonic_ms,
        tick_ms: int = 5,
    ) -> None:
        if tick_ms <= 0:
            raise ValueError(f"PtySimulator tick_ms must be > 0, got {tick_ms!r}")
        self._config = config if config is not None else SimConfig()
        self._clock_ms = clock_ms
        self._tick_ms = tick_ms
        self._rx_ms = 0  # when the last bytes from the host were handed to the firmware
        self._looked_ms = clock_ms()  # when this process last looked at the port
        self._link_path = Path(link_path) if link_path is not None else None
        rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not cryptography
        self._firmware = SimFirmware(self._config, rng, now_ms=clock_ms())
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        self._slave_path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._tx_dropped_bytes = 0
        self._opened = False
        self._belt_pulse_sink: Callable[[list[float]], None] | None = None

    # ---------------------------------------------------------------- properties

    @property
    def looked_ms(self) -> int:
        """When (``clock_ms``) this simulator last looked at its port (a tick or a read)."""
        return self._looked_ms

    @property
    def firmware(self) -> SimFirmware:
        return self._firmware

    @property
    def port(self) -> str:
        """What the bridge should open: the stable link if one was asked for, else the pty."""
        if self._link_path is not None:
            return str(self._link_path)
        if self._slave_path is None:
            raise RuntimeError("PtySimulator has no pty yet: use it as `async with PtySimulator()`")
        return self._slave_path

    @property
    def slave_path(self) -> str | None:
        """The current ``/dev/pts/N`` path, None while unplugged."""
        return self._slave_path if self._master_fd is not None else None

    @property
    def connected(self) -> bool:
        """True while the simulated cable is plugged in."""
        return self._master_fd is not None

    @property
    def tx_dropped_bytes(self) -> int:
        """Bytes the firmware sent that found the pty buffer full (nobody reading) and were lost."""
        return self._tx_dropped_bytes

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> PtySimulator:
        if self._opened:
            raise RuntimeError("PtySimulator is not re-entrant: make a new one")
        self._opened = True
        self._loop = asyncio.get_running_loop()
        self._open_pty()
        self._tick_task = self._loop.create_task(self._tick_loop(), name="sim-firmware-tick")
        self._tick_task.add_done_callback(_log_crash)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the firmware's tick task and close the pty (idempotent)."""
        task, self._tick_task = self._tick_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_pty()

    # ---------------------------------------------------------------- cable

    async def disconnect(self) -> None:
        """Unplug: close the master side. The bridge's reads fail as on a USB unplug."""
        if self._master_fd is None:
            return
        _LOG.info("sim: cable unplugged (pty %s closed)", self._slave_path)
        self._close_pty()

    async def reconnect(self) -> None:
        """Re-plug: a new pty (new ``/dev/pts/N``), the stable link re-pointed at it.

        The firmware keeps running across the unplug (it is powered by the treadmill, not by
        the cable), so its lease has expired if the belt was moving.
        """
        if self._master_fd is not None:
            return
        if self._loop is None:
            raise RuntimeError("PtySimulator.reconnect() needs `async with PtySimulator()` first")
        self._open_pty()
        _LOG.info("sim: cable plugged in (pty %s)", self._slave_path)

    # ---------------------------------------------------------------- faults

    async def inject(self, fault: SimFault, **params: Any) -> None:
        """Inject ``fault`` now; DISCONNECT unplugs the cable (see :meth:`SimFirmware.inject`)."""
        if fault is SimFault.DISCONNECT:
            await self.disconnect()
            return
        self._firmware.inject(fault, now_ms=self._clock_ms(), **params)

    async def clear(self, fault: SimFault) -> None:
        """Remove ``fault``; clearing DISCONNECT plugs the cable back in."""
        if fault is SimFault.DISCONNECT:
            await self.reconnect()
            return
        self._firmware.clear(fault)

    def attach_belt_sensor(
        self, distance_per_pulse_mm: float, sink: Callable[[list[float]], None]
    ) -> None:
        """Wire the simulated Pi belt sensor: every tick ``sink`` gets the pulse times (ms on
        ``clock_ms``) since the last one; the sensor gives a pulse every
        ``distance_per_pulse_mm`` of belt travel (the controller's configured value)."""
        self._firmware.physics.set_aux_distance_per_pulse(distance_per_pulse_mm)
        self._firmware.physics.take_aux_pulses()
        self._belt_pulse_sink = sink

    def set_safety_key(self, closed: bool) -> None:
        """Close or open the safety key circuit (open cuts motor power in hardware)."""
        self._firmware.set_safety_key(closed, now_ms=self._clock_ms())

    # ---------------------------------------------------------------- internals

    def _open_pty(self) -> None:
        assert self._loop is not None  # noqa: S101 - only called once the loop is known
        master_fd, slave_fd = os.openpty()
        tty.setraw(slave_fd)
        os.set_blocking(master_fd, False)
        self._master_fd = master_fd
        # Keep our own slave fd open: with no slave fd open, reads on the master fail with
        # EIO, and bytes written while the bridge is between opens would be lost anyway.
        self._slave_fd = slave_fd
        self._slave_path = os.ttyname(slave_fd)
        if self._link_path is not None:
            tmp = self._link_path.with_name(self._link_path.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._slave_path)
            tmp.replace(self._link_path)
        self._loop.add_reader(master_fd, self._on_readable)

    def _close_pty(self) -> None:
        master_fd, self._master_fd = self._master_fd, None
        slave_fd, self._slave_fd = self._slave_fd, None
        if master_fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(master_fd)
            os.close(master_fd)
        if slave_fd is not None:
            os.close(slave_fd)
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()

    def _on_readable(self) -> None:
        self._read_input()

    def _arrival_ms(self) -> int:
        """When the bytes waiting now reached the port, as well as this process can tell.

        A chip's UART receives while its main loop runs; this process, on a loaded host, can be
        descheduled for longer than a lease. Normally it looks at the port at least every tick,
        so waiting bytes arrived just now. After a stall of its own (more than two ticks since
        it last looked) they arrived during the stall, at the earliest when it last looked:
        they are credited to that moment, so that the simulator's own stall never reads as a
        late host and expires the lease (FW-3) with SET_SPEED frames sitting unread. A stall
        longer than the lease still expires it, as it would on a chip whose receiver stopped.
        """
        now_ms = self._clock_ms()
        stalled = now_ms - self._looked_ms > 2 * self._tick_ms
        arrival_ms = self._looked_ms if stalled else now_ms
        self._looked_ms = now_ms
        return arrival_ms

    def _read_input(self) -> bool:
        """Hand what the host has sent to the firmware; False when nothing was waiting."""
        fd = self._master_fd
        if fd is None:
            return False
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno == errno.EIO:
                return False  # no slave open at this instant; nothing to read
            raise
        if not data:
            return False
        # Never before bytes already handed over: the firmware's clock only moves forward.
        self._rx_ms = max(self._arrival_ms(), self._rx_ms)
        self._write(self._firmware.receive(data, self._rx_ms))
        return True

    async def _tick_loop(self) -> None:
        period_s = self._tick_ms / 1000.0
        while True:
            # Whatever waits in the port first (see _arrival_ms), then the firmware's tick.
            while self._read_input():
                pass
            self._looked_ms = self._clock_ms()
            self._write(self._firmware.tick(self._looked_ms))
            pulses = self._firmware.physics.take_aux_pulses()
            if pulses and self._belt_pulse_sink is not None:
                self._belt_pulse_sink(pulses)
            await asyncio.sleep(period_s)

    def _write(self, data: bytes) -> None:
        """Non-blocking write to the master; what does not fit is lost like on a real UART."""
        fd = self._master_fd
        if not data:
            return
        if fd is None:
            self._tx_dropped_bytes += len(data)
            return
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            written = 0
        self._tx_dropped_bytes += len(data) - written
