"""The minute-long corruption rows of the fault matrix, and the thread that runs them.

Corrupted bytes (``SimFault.CORRUPT_BYTES``) flip a share of the bytes in *both* directions of
the serial line. A row runs the belt at stage 1's maximum, corrupts the line for
:data:`CORRUPTION_S` seconds and samples the true belt speed and the controller's state
throughout. The rows take a minute each, so they run in a background thread with its own
event loop, started with the first row of the matrix (tests/faults/conftest.py), while the
short rows run in the foreground; ``test_corruption.py`` collects their results at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench.rig import STANDSTILL_KMH, Rig
from firmware_bridge.sim.firmware import SimFault
from tests.faults.support import STAGE1_MAX_KMH, fault_options

__all__ = ["CORRUPTION_S", "BackgroundRows", "corruption_row"]

CORRUPTION_S = 60.0
STATUS_EVERY_S = 0.25

RowFactory = Callable[[], Coroutine[Any, Any, dict[str, Any]]]


async def corruption_row(
    pct: float, *, duration_s: float = CORRUPTION_S, seed: int
) -> dict[str, Any]:
    """Run at 2.0 km/h with ``pct`` % of the line's bytes corrupted for ``duration_s``."""
    async with Rig(fault_options(seed=seed)) as rig:
        await rig.start_belt(STAGE1_MAX_KMH)
        watch = rig.watch_belt(period_s=0.005)
        t0 = time.monotonic_ns()
        await rig.simulator.inject(SimFault.CORRUPT_BYTES, pct=pct)
        modes: list[tuple[float, str, str | None]] = []  # (s since start, mode, fault)
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            state = await rig.status()  # the mock-panel socket is not on the corrupted line
            fault = state["fault"]["code"] if state["fault"] else None
            modes.append(((time.monotonic_ns() - t0) / 1e9, state["state"], fault))
            await asyncio.sleep(STATUS_EVERY_S)  # sampling period of the state
        await rig.simulator.clear(SimFault.CORRUPT_BYTES)
        final = await rig.status()
        await watch.stop()
        fault_at = next((t for t, _, f in modes if f is not None), None)
        rest_ns = watch.rest_after(t0)
        return {
            "pct": pct,
            "duration_s": duration_s,
            "final_state": final["state"],
            "final_fault": final["fault"]["code"] if final["fault"] else None,
            "final_fault_message": final["fault"]["message"] if final["fault"] else None,
            "fault_after_s": round(fault_at, 2) if fault_at is not None else None,
            "modes_seen": sorted({m for _, m, _ in modes}),
            "peak_kmh": round(watch.peak_kmh(t0), 3),
            "belt_end_kmh": round(rig.belt_kmh, 3),
            "at_rest_after_s": round((rest_ns - t0) / 1e9, 2) if rest_ns is not None else None,
            "standstill_kmh": STANDSTILL_KMH,
            "running_fraction": round(
                sum(1 for _, m, _ in modes if m == "running") / max(1, len(modes)), 3
            ),
            "link": {
                k: final["link"].get(k)
                for k in ("crc_errors", "resyncs", "frames_rx", "retransmits", "naks")
            },
            "firmware_fault": rig.simulator.firmware.fault.name,
            "bytes_corrupted": rig.simulator.firmware.bytes_corrupted,
        }


class BackgroundRows:
    """Runs row coroutines concurrently in a thread with its own event loop."""

    def __init__(self, rows: dict[str, RowFactory]) -> None:
        self._rows = rows
        self.futures: dict[str, concurrent.futures.Future[dict[str, Any]]] = {
            name: concurrent.futures.Future() for name in rows
        }
        self._thread = threading.Thread(target=self._main, name="fault-rows", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def result(self, name: str, timeout_s: float) -> dict[str, Any]:
        """The result of row ``name`` (starting the rows if they are not running yet)."""
        self.start()
        return self.futures[name].result(timeout=timeout_s)

    def _main(self) -> None:
        asyncio.run(self._run_all())

    async def _run_all(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main_task = asyncio.current_task()

        async def one(name: str, factory: RowFactory) -> None:
            future = self.futures[name]
            try:
                future.set_result(await factory())
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:  # handed to the test that collects this row
                future.set_exception(exc)

        await asyncio.gather(*(one(name, factory) for name, factory in self._rows.items()))

    def close(self, timeout_s: float = 60.0) -> None:
        """Cancel rows still running (their rigs shut the services down) and join."""
        if not self._started:
            return
        loop, task = self._loop, self._main_task
        if loop is not None and task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # the loop may just have finished
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout_s)
