"""The bridge's push reader: bytes reach the sink in order as they arrive; end of file, a
transport error and a sink failure each end the read loop, and never the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.tools.virtual_time import run_virtual
from firmware_bridge.port.reader import PushStreamReader
from firmware_bridge.sim.memory import MemorySimulator
from tests.sim.helpers import memory_bridge


async def _reader_case(ending: str) -> tuple[list[bytes], str]:
    reader = PushStreamReader()
    got: list[bytes] = []
    reader.feed_data(b"one")
    reader.feed_data(bytearray(b"two"))
    reader.attach(got.append)
    reader.feed_data(b"three")
    pending = asyncio.ensure_future(reader.read(1024))
    await asyncio.sleep(0)
    assert not pending.done(), "read() returned while bytes went to the sink"
    if ending == "eof":
        reader.feed_eof()
    elif ending == "transport":
        reader.set_exception(OSError(5, "Input/output error"))
    else:
        reader.fail(RuntimeError("the session ended"))
        reader.feed_data(b"after the failure")
    try:
        outcome = repr(await pending)
    except Exception as exc:  # the outcome under test
        outcome = repr(exc)
    return got, outcome


@pytest.mark.parametrize(
    ("ending", "outcome"),
    [
        ("eof", "b''"),
        ("transport", "OSError(5, 'Input/output error')"),
        ("fail", "RuntimeError('the session ended')"),
    ],
)
def test_bytes_reach_the_sink_in_order_and_the_ending_ends_read(ending: str, outcome: str) -> None:
    got, seen = asyncio.run(_reader_case(ending))
    assert got == [b"one", b"two", b"three"]  # kept bytes first, nothing after a failure
    assert seen == outcome


async def _bridge_whose_link_callback_raises() -> tuple[BaseException | None, list[str]]:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context)))

    def clock_ms() -> int:
        return round(loop.time() * 1000)

    def on_link_change(up: bool, reason: str) -> None:
        if up:
            raise RuntimeError("a callback bug")

    async with MemorySimulator(clock_ms=clock_ms) as sim:
        bridge = memory_bridge(sim, clock_ms, on_link_change=on_link_change)
        error: BaseException | None = None
        try:
            await asyncio.wait_for(bridge.run(), timeout=5.0)
        except BaseException as exc:  # the outcome under test
            error = exc
    return error, reported


def test_a_failure_while_handling_bytes_ends_the_session_not_the_event_loop() -> None:
    error, reported = run_virtual(_bridge_whose_link_callback_raises())
    assert isinstance(error, ExceptionGroup), repr(error)
    leaves: list[Any] = list(error.exceptions)
    assert [repr(e) for e in leaves] == ["RuntimeError('a callback bug')"]
    assert reported == []  # raised in the read loop's task, never out of the transport
