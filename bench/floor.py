"""The platform's floor: what an asyncio process that does nothing but wake like the service
costs in CPU on this machine.

    python -m bench.floor                   # 60 s per pattern
    python -m bench.floor --seconds 20

The service wakes twice per 20 ms control period: once for its tick (the loop's timerfd alarm,
controller/runtime/alarm.py) and once when the firmware's STATUS frame arrives on the serial
port. Each wake costs the kernel's and the event loop's share before any of our code runs, and
on a virtual machine a wake from idle is far dearer than on bare metal. This benchmark runs an
empty Python process with the same wake pattern and reports its CPU, measured as the service's
is (``/proc/<pid>/stat``):

* ``tick``: an asyncio loop woken at 50 Hz by the same alarm, doing nothing;
* ``tick_and_frames``: the same, plus a 24-byte frame written to a pseudo-terminal at 50 Hz by
  another process, 10 ms out of phase, read with ``loop.add_reader`` as the bridge reads the
  serial port;
* ``sleep``: a plain ``time.sleep`` loop at 50 Hz (no event loop), the cost of the wake alone.

The service's CPU minus ``tick_and_frames`` is what its own work costs (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
import tty
from typing import Any

from bench.rig import REPO, proc_cpu_s
from controller.runtime.alarm import Alarm

__all__ = ["PATTERNS", "floor_runs", "main"]

PATTERNS = ("sleep", "tick", "tick_and_frames")
PERIOD_S = 0.02  # 50 Hz: control.rate_hz and the firmware's STATUS rate
FRAME = bytes(24)  # a STATUS frame's length
SETTLE_S = 2.0


async def _child(pattern: str, fd: int) -> None:
    """The measured process: wake as the service wakes, do nothing else, forever."""
    loop = asyncio.get_running_loop()
    if pattern == "tick_and_frames":
        os.set_blocking(fd, False)
        loop.add_reader(fd, os.read, fd, 1024)
    alarm = Alarm(loop)
    sys.stdout.write(f"ready precise={alarm.precise}\n")
    sys.stdout.flush()
    deadline = loop.time()
    while True:
        deadline += PERIOD_S
        woken: asyncio.Future[None] = loop.create_future()
        alarm.set(deadline, functools.partial(_resolve, woken))
        await woken


def _resolve(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def _sleep_child() -> None:
    """The measured process of ``sleep``: the wake alone, without an event loop."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    deadline = time.monotonic()
    while True:
        deadline += PERIOD_S
        time.sleep(max(0.0, deadline - time.monotonic()))


async def _measure(pattern: str, seconds: float) -> dict[str, Any]:
    """Run one pattern's process for ``seconds`` (after it settles); its CPU in % of a core."""
    master, slave = os.openpty()
    tty.setraw(slave)  # a serial port's raw bytes, not a terminal's lines
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.floor",
        "--child",
        pattern,
        "--fd",
        str(slave),
        pass_fds=(slave,),
        stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO),
    )
    os.close(slave)
    writer: asyncio.Task[None] | None = None
    frames_written = [0]
    try:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode().strip()

        async def frames() -> None:
            deadline = loop.time() + PERIOD_S / 2
            while True:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                os.write(master, FRAME)
                frames_written[0] += 1
                deadline += PERIOD_S

        if pattern == "tick_and_frames":
            writer = asyncio.create_task(frames(), name="floor-frames")
        await asyncio.sleep(SETTLE_S)
        cpu0, t0 = proc_cpu_s(proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = proc_cpu_s(proc.pid), time.monotonic()
    finally:
        if writer is not None:
            writer.cancel()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        os.close(master)
    return {
        "pattern": pattern,
        "banner": banner,
        "duration_s": round(t1 - t0, 1),
        "cpu_pct_of_core": round(100.0 * (cpu1 - cpu0) / (t1 - t0), 2),
        "frames_written": frames_written[0],
    }


async def floor_runs(seconds: float) -> dict[str, Any]:
    """Every pattern, one after the other."""
    return {pattern: await _measure(pattern, seconds) for pattern in PATTERNS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--child", choices=PATTERNS, help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "sleep":
        _sleep_child()
    elif args.child:
        asyncio.run(_child(args.child, args.fd))
        return 0
    results = asyncio.run(floor_runs(args.seconds))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
