"""MQTT message rates of the running controller, counted by a real ``mosquitto_sub``.

The controller runs in-process on the simulated firmware and mock pins (as in
``treadmill demo``), connected to a throw-away mosquitto on loopback. A separate
``mosquitto_sub -t '#'`` process counts what a subscriber such as Home Assistant receives,
per topic, in three phases::

    rest     belt at rest, no session                       (``--phase-s`` seconds)
    walking  stage 2, 2.0 km/h, a training session open     (``--phase-s`` seconds)
    tail     after STOP, the belt at rest, session closing  (``--phase-s`` seconds)

Retained messages delivered on subscribe (discovery, availability) are counted apart. Run::

    python -m bench.mqtt_rates [--phase-s 20] [--json OUT]

It prints one table (messages a second per topic and phase) and, with ``--json``, writes the
figures. The machine's load does not change the counts much: the rates are set by the
publisher's throttles, not by the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

__all__ = ["main"]


def _topic_kind(topic: str) -> str:
    if topic.startswith("homeassistant/"):
        return "discovery"
    return topic.rsplit("/", 1)[-1] if "/cmd/" not in topic else "cmd"


async def _measure(phase_s: float) -> dict[str, dict[str, float]]:
    from gpiozero.pins.mock import MockFactory

    from controller.runtime.service import Service
    from controller.settings.config import load_config
    from controller.tools.broker import DemoBroker
    from controller.tools.demo import bundled_config_path, demo_config
    from controller.tools.mockpanel import MockPanel
    from firmware_bridge.sim.pty import PtySimulator

    sub_binary = shutil.which("mosquitto_sub")
    if sub_binary is None:
        raise SystemExit("mosquitto_sub is needed (sudo apt-get install mosquitto-clients)")
    async with DemoBroker("mosquitto") as broker:
        with tempfile.TemporaryDirectory(prefix="treadmill-rates-") as folder:
            state_dir = Path(folder)
            config = demo_config(
                load_config(bundled_config_path()),
                state_dir=state_dir,
                broker=(broker.host, broker.port),
                training=True,
            )
            sub = await asyncio.create_subprocess_exec(
                sub_binary,
                *("-h", broker.host, "-p", str(broker.port), "-t", "#", "-F", "%U %r %t"),
                stdout=subprocess.PIPE,
            )
            service = Service(
                config,
                pin_factory=MockFactory(),
                simulator=PtySimulator(seed=0, link_path=state_dir / "firmware.tty"),
                enable_mqtt=True,
                install_signal_handlers=False,
            )
            run = asyncio.create_task(service.run(), name="rates-service")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not service.ready.is_set() or service.panel is None:
                if run.done() or loop.time() > deadline:
                    raise SystemExit("the service did not start")
                await asyncio.sleep(0.01)
            panel = MockPanel(service)
            panel.reset_inputs()
            await asyncio.sleep(2.0)  # let the first announce settle
            marks = {"rest": time.time()}
            await asyncio.sleep(phase_s)
            panel.stage(2)
            panel.grip("both")
            await asyncio.sleep(0.3)
            panel.press("start")
            await asyncio.sleep(0.3)
            panel.target(2.0)
            await asyncio.sleep(3.0)  # ramp
            marks["walking"] = time.time()
            await asyncio.sleep(phase_s)
            marks["walking_end"] = time.time()
            panel.press("stop")
            await asyncio.sleep(3.0)  # ramp down
            marks["tail"] = time.time()
            await asyncio.sleep(phase_s)
            marks["end"] = time.time()
            service.request_shutdown("measurement done")
            await run
            sub.terminate()
            raw, _ = await asyncio.wait_for(sub.communicate(), 10)
            out = raw.decode("utf-8", errors="replace")
    windows = {
        "rest": (marks["rest"], marks["rest"] + phase_s),
        "walking": (marks["walking"], marks["walking_end"]),
        "tail": (marks["tail"], marks["end"]),
    }
    counts: dict[str, Counter[str]] = {name: Counter() for name in windows}
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3:
            continue
        ts_s, retained, topic = float(parts[0]), parts[1] == "1", parts[2]
        if retained:
            continue  # delivered from the broker's store on subscribe
        for name, (start, end) in windows.items():
            if start <= ts_s < end:
                counts[name][_topic_kind(topic)] += 1
    return {
        name: {
            kind: round(n / (windows[name][1] - windows[name][0]), 3)
            for kind, n in sorted(counts[name].items())
        }
        | {"total": round(sum(counts[name].values()) / (windows[name][1] - windows[name][0]), 3)}
        for name in windows
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_rates", description=__doc__)
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rates = asyncio.run(_measure(args.phase_s))
    for phase, figures in rates.items():
        row = "  ".join(f"{k} {v:.2f}/s" for k, v in figures.items())
        print(f"{phase:8s} {row}")
    if args.json is not None:
        args.json.write_text(json.dumps(rates, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
