"""The simulated firmware on an in-memory link: the sans-IO simulator without a pseudo-terminal.

:class:`MemorySimulator` serves a :class:`~firmware_bridge.sim.firmware.SimFirmware` like
:class:`~firmware_bridge.sim.pty.PtySimulator` does, with the same controls (cable, faults,
safety key), but the bytes go through memory: the bridge opens the link with
:meth:`MemorySimulator.open_connection` (pass it as the bridge's ``open_port``) instead of a
serial device. Nothing waits on the kernel, so on a virtual clock
(:mod:`controller.tools.virtual_time`) a run is exact and as fast as its work; the frames, the
codec, the bridge and the service are the real ones.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from firmware_bridge.port.reader import PushStreamReader
from firmware_bridge.sim.pty import PtySimulator

_LOG = logging.getLogger(__name__)

MEMORY_PORT = "memory://sim"


class _MemoryTransport(asyncio.Transport):
    """The bridge's end of the in-memory cable: writes go to the simulated firmware."""

    def __init__(self, simulator: MemorySimulator) -> None:
        super().__init__()
        self._simulator = simulator
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._simulator._from_host(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self._closing:
            self._closing = True
            self._simulator._host_closed(self)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class MemorySimulator(PtySimulator):
    """A :class:`PtySimulator` whose cable is in memory. Use as ``async with``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("link_path", None)
        super().__init__(*args, **kwargs)
        self._plugged = False
        self._reader: PushStreamReader | None = None
        self._transport: _MemoryTransport | None = None

    async def __aenter__(self) -> MemorySimulator:
        await super().__aenter__()
        return self

    @property
    def port(self) -> str:
        return MEMORY_PORT

    @property
    def slave_path(self) -> str | None:
        return None

    @property
    def connected(self) -> bool:
        return self._plugged

    async def open_connection(self) -> tuple[PushStreamReader, asyncio.StreamWriter]:
        """Open the link as the bridge opens a serial port; OSError while unplugged."""
        if not self._plugged:
            raise OSError(f"could not open port {MEMORY_PORT}: the simulated cable is unplugged")
        loop = asyncio.get_running_loop()
        self._drop_host_side()
        reader = PushStreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = _MemoryTransport(self)
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self._reader = reader
        self._transport = transport
        return reader, writer

    async def disconnect(self) -> None:
        """Unplug: the bridge reads end of file, and opens fail until :meth:`reconnect`."""
        if self._plugged:
            _LOG.info("sim: cable unplugged (memory link)")
            self._close_pty()

    async def reconnect(self) -> None:
        """Re-plug: the bridge's next open succeeds. The firmware kept running meanwhile."""
        if not self._plugged:
            self._open_pty()
            _LOG.info("sim: cable plugged in (memory link)")

    # The cable: PtySimulator's pty hooks, in memory.

    def _open_pty(self) -> None:
        self._plugged = True

    def _close_pty(self) -> None:
        self._plugged = False
        self._drop_host_side()

    def _drop_host_side(self) -> None:
        reader, self._reader = self._reader, None
        self._transport = None
        if reader is not None and not reader.at_eof():
            reader.feed_eof()  # the bridge reads end of file, as on an unplug

    def _host_closed(self, transport: _MemoryTransport) -> None:
        if transport is self._transport:
            self._reader = None
            self._transport = None

    def _from_host(self, data: bytes) -> None:
        loop = self._loop
        if loop is None or not self._plugged:
            return
        loop.call_soon(self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        if self._plugged and self._transport is not None:
            self._write(self._firmware.receive(data, self._clock_ms()))

    def _write(self, data: bytes) -> None:
        """To the bridge; what finds no open link is lost like on a real UART."""
        if not data:
            return
        reader = self._reader
        if reader is None or not self._plugged:
            self._tx_dropped_bytes += len(data)
            return
        reader.feed_data(data)
