"""CPU of the control tick, deterministically: the real service on a virtual clock.

    python -m bench.tick_cpu                 # 3000 ticks (60 s of belt time at 50 Hz)
    python -m bench.tick_cpu --ticks 10000 --repeat 5
    python -m bench.tick_cpu --gc-threshold 5000 20 10    # the collector's thresholds

The real :class:`~controller.runtime.service.Service` (config/demo.yaml, training on, MQTT
off) runs against the simulated firmware on an in-memory cable
(:mod:`firmware_bridge.sim.memory`) and gpiozero mock pins, on a virtual clock
(:mod:`controller.tools.virtual_time`), with the belt at 2.0 km/h. Nothing waits for real
time, so the figures do not depend on the machine's load the way a real-time run does, only
on its speed (and, a little, on other jobs sharing the CPU cache):

* ``tick_us``: CPU (``time.process_time``) inside the service's tick (gather, decide, carry
  out, training, observers), per tick;
* ``process_us``: CPU of the whole process per tick: the tick, the event loop, the bridge's
  read and supervisor tasks and the simulated firmware, which in production runs on the
  motor controller (so this is an upper bound of the service's share);
* ``gcN_per_1000_ticks`` and ``gcN_cpu_us_max``: the garbage collector's collections of
  generation N (0, 1, 2) during the measured ticks, and the CPU time of the longest;
* ``blocks_per_tick``: the growth of Python's allocated blocks over the run (a leak check).

The serial write itself is in memory here: the cost of a real pseudo-terminal write is
not included (``python -m bench --only loop`` measures the real process).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "config" / "demo.yaml"
TARGET_KMH = 2.0


def _config(state_dir: Path) -> Any:
    from controller.settings.config import load_config

    raw = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    raw["serial"]["port"] = "sim://"
    raw["state_dir"] = str(state_dir)
    raw["gpio"]["mock_socket"] = None
    raw["mqtt"] = {"enabled": False}
    path = state_dir / "treadmill.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_config(path)


async def _wait(condition: Any, what: str, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def measure(ticks: int) -> dict[str, float]:
    """Run the belt, then measure ``ticks`` control ticks."""
    from controller.adapters.gpio.inputs import mock_pin_factory
    from controller.rules.model import Mode, SetTarget
    from controller.runtime.service import Service
    from controller.tools.virtual_time import VirtualTimeLoop
    from firmware_bridge.sim.firmware import SimConfig
    from firmware_bridge.sim.memory import MemorySimulator

    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise RuntimeError("run on a VirtualTimeLoop")
    with tempfile.TemporaryDirectory(prefix="treadmill-tick-cpu-") as state:
        # A short frame log: the simulator's history would otherwise grow the heap the
        # collector scans; in production the firmware is another machine.
        simulator = MemorySimulator(SimConfig(host_log_size=64), seed=3, clock_ms=loop.clock_ms)
        service = Service(
            _config(Path(state)),
            pin_factory=mock_pin_factory(loop.time),
            simulator=simulator,
            enable_mqtt=False,
            install_signal_handlers=False,
            clock_ms=loop.clock_ms,
        )
        run = asyncio.create_task(service.run(), name="service")
        await _wait(service.ready.is_set, "ready")
        panel = service.mock_panel
        assert panel is not None
        panel.reset_inputs()
        panel.grip("both")
        await asyncio.sleep(0.5)
        panel.press("start")
        await _wait(lambda: service.state.mode == Mode.RUNNING, "running")
        service.submit_local(SetTarget(TARGET_KMH))
        await _wait(lambda: simulator.firmware.true_speed_kmh >= TARGET_KMH - 0.05, "speed")

        tick_cpu = [0.0]
        real_tick = service._tick

        def timed_tick() -> None:
            started = time.process_time()
            try:
                real_tick()
            finally:
                tick_cpu[0] += time.process_time() - started

        service._tick = timed_tick  # type: ignore[method-assign]  # the bench's probe
        pauses: list[list[float]] = [[], [], []]
        gc_started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.process_time()
            else:
                pauses[info["generation"]].append(time.process_time() - gc_started[0])

        blocks_before = sys.getallocatedblocks()
        ticks_before = service.loop_stats.ticks
        gc.callbacks.append(on_gc)
        cpu_before = time.process_time()
        await _wait(lambda: service.loop_stats.ticks - ticks_before >= ticks, "ticks", 1e6)
        cpu_s = time.process_time() - cpu_before
        gc.callbacks.remove(on_gc)
        done = service.loop_stats.ticks - ticks_before
        blocks = sys.getallocatedblocks() - blocks_before
        if service.state.mode != Mode.RUNNING:
            raise RuntimeError(f"the belt stopped during the run: {service.state.mode}")
        service._tick = real_tick  # type: ignore[method-assign]
        service.request_shutdown("bench finished")
        await asyncio.wait_for(run, timeout=60)
    return {
        "ticks": done,
        "tick_us": round(tick_cpu[0] / done * 1e6, 1),
        "process_us": round(cpu_s / done * 1e6, 1),
        **{f"gc{g}_per_1000_ticks": round(len(p) / done * 1000, 2) for g, p in enumerate(pauses)},
        **{f"gc{g}_cpu_us_max": round(max(p, default=0.0) * 1e6, 1) for g, p in enumerate(pauses)},
        "blocks_per_tick": round(blocks / done, 2),
    }


def main(argv: list[str] | None = None) -> int:
    from controller.tools.virtual_time import run_virtual

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--json", action="store_true", help="print every run as JSON")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        nargs=3,
        metavar=("GEN0", "GEN1", "GEN2"),
        help="gc.set_threshold() for the run (default: the interpreter's)",
    )
    args = parser.parse_args(argv)
    if args.gc_threshold:
        gc.set_threshold(*args.gc_threshold)
    runs = [run_virtual(measure(args.ticks)) for _ in range(args.repeat)]
    if args.json:
        print(json.dumps(runs, indent=2))
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    for key, value in median.items():
        print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
