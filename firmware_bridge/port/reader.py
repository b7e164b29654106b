"""The bridge's end of the port: a stream reader that hands bytes on as they arrive.

asyncio's :class:`~asyncio.StreamReader` buffers what the transport delivers and wakes a task
blocked in ``read()``: two passes of the event loop per STATUS frame, 50 times a second. A
:class:`PushStreamReader` with a sink calls the sink from the transport's own callback
instead (one pass, no buffer copy, no task woken), while end of file and transport errors still
end a pending ``read()``, so the task that owns the port learns that the link went down exactly
as before. The sink must not raise: it reports a failure with :meth:`fail`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import SupportsIndex

import serial_asyncio_fast

__all__ = ["PushStreamReader", "open_serial_port"]


class PushStreamReader(asyncio.StreamReader):
    """A StreamReader whose bytes go to a sink, once attached, as the transport delivers them.

    Bytes that arrive before :meth:`attach` are kept and handed to the sink first, in order.
    ``read()`` returns only at end of file (``b""``) or raises the transport's error, or the
    error given to :meth:`fail`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(loop=loop)  # its buffer stays empty: bytes go to _early or the sink
        self._sink: Callable[[bytes], None] | None = None
        self._early: list[bytes] = []

    def attach(self, sink: Callable[[bytes], None]) -> None:
        """From now on every chunk goes to ``sink``, starting with the ones kept so far."""
        early, self._early = self._early, []
        self._sink = sink
        for chunk in early:
            self._sink(chunk)  # not ``sink``: a failure on the way replaces it

    def fail(self, exc: Exception) -> None:
        """End the stream with ``exc``: a pending ``read()`` raises it; later bytes are
        dropped, like the bytes of a port that is being closed."""
        self._sink = _drop
        self.set_exception(exc)

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        chunk = data if isinstance(data, bytes) else bytes(data)
        sink = self._sink
        if sink is None:
            self._early.append(chunk)
        else:
            sink(chunk)


def _drop(data: bytes) -> None:
    """The sink of a failed stream."""


async def open_serial_port(port: str, baud: int) -> tuple[PushStreamReader, asyncio.StreamWriter]:
    """Open the serial device ``port`` (exclusively) as a push reader and a writer."""
    loop = asyncio.get_running_loop()
    reader = PushStreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop, lambda: protocol, url=port, baudrate=baud, exclusive=True
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
