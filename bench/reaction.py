"""Reaction-time trials against the running service, timed at the firmware's end of the wire.

* **grip release at stage 1**: both hands on, START, run at the start speed, release; the
  figure is the time from the end of the grace period (release + ``grace_ms``) to the first
  STOP (or ESTOP) frame the simulated firmware decodes. The release instant is taken just
  before the mock-panel command is written, so the socket hop is *inside* the figure.
* **e-stop and safety-key edges**: START, run, press the e-stop (or pull the key); the figure
  is the time from the GPIO command to the first ESTOP frame. The socket round trip of each
  command is reported next to it.
* **remote stop**: START, run, publish ``PRESS`` to ``<prefix>/cmd/stop`` (QoS 1, as the
  ``dashboard`` account, from this process); the figure is the time from the publish call to
  the first STOP frame, through the broker and, when flooded, past the junk commands.

Between trials the rig resets the console (e-stop out, key in, belt at rest, RESET) exactly as
a person would; every trial starts from IDLE. The release/press instant is offset by a random
0-40 ms so that it falls on every phase of the 50 Hz control loop.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from bench.rig import NS_PER_MS, Rig, RigError
from firmware_bridge.wire.messages import EStop, SetSpeed, Stop

__all__ = ["TrialSet", "bench_stage1_edit", "edge_trials", "grip_trials", "remote_stop_trials"]

#: Stage 1's acceleration in the reaction benchmarks (km/h/s); config/demo.yaml has 0.2.
BENCH_STAGE1_ACCEL_KMH_S = 1.0
RANDOM_PHASE_S = 0.040


def bench_stage1_edit(raw: dict[str, Any]) -> None:
    """Config edit for the reaction trials: stage 1 accelerates at the firmware's limit.

    Only the time to reach the 0.5 km/h start speed changes (0.5 s instead of 2.5 s per
    trial); the grace time, the debounce, the loop rate, the stop ramp and every limit are
    those of config/demo.yaml. The acceleration is not on any measured path.
    """
    raw["stages"][0]["accel_kmh_s"] = BENCH_STAGE1_ACCEL_KMH_S


@dataclass
class TrialSet:
    """Results of one kind of trial: latencies (ms) and the command round trips (ms)."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


async def _run_at_start_speed(rig: Rig, start_kmh: float) -> None:
    """Grip, START, and wait until the controller commands the start speed on the wire."""
    await rig.grip_held()
    pressed_ns = time.monotonic_ns()
    await rig.panel.ok("press start")
    deadline = time.monotonic() + 15.0
    while True:
        frame = await rig.wire.wait_for((SetSpeed,), after_ns=pressed_ns, timeout_s=1.0)
        if frame is not None and isinstance(frame.message, SetSpeed):
            if frame.message.speed_kmh >= start_kmh - 1e-6:
                return
            pressed_ns = frame.t_ns + 1
        if time.monotonic() > deadline:
            state = await rig.status()
            raise RigError(f"the belt did not reach {start_kmh} km/h after START: {state}")


def _progress(label: str, done: int, total: int, started: float) -> None:
    every = max(1, total // 10)
    if done % every == 0 or done == total:
        elapsed = time.monotonic() - started
        left = elapsed / done * (total - done)
        sys.stderr.write(f"  {label}: {done}/{total} ({elapsed:.0f} s, about {left:.0f} s left)\n")
        sys.stderr.flush()


async def _recover(rig: Rig, result: TrialSet, index: int) -> None:
    """Back to IDLE after a trial; a console that will not reset is retried, then given up."""
    for attempt in range(3):
        try:
            await rig.to_idle()
        except RigError as exc:
            result.failures.append(f"trial {index}: reset attempt {attempt + 1}: {exc}")
        else:
            return
    raise RigError(f"{result.name}: the console did not come back to IDLE after trial {index}")


async def grip_trials(
    rig: Rig,
    trials: int,
    *,
    grace_ms: int,
    start_kmh: float,
    rng: random.Random,
    label: str = "grip",
) -> TrialSet:
    """``trials`` grip releases at stage 1; latency = first STOP frame - (release + grace)."""
    result = TrialSet(label)
    started = time.monotonic()
    await rig.to_idle()
    for index in range(trials):
        try:
            await _run_at_start_speed(rig, start_kmh)
            await asyncio.sleep(rng.uniform(0.0, RANDOM_PHASE_S))
            release_ns = time.monotonic_ns()
            await rig.panel.ok("grip none")
            result.rtt_ms.append(rig.panel.last_rtt_ns / NS_PER_MS)
            frame = await rig.wire.wait_for(
                (Stop, EStop), after_ns=release_ns, timeout_s=grace_ms / 1000 + 2.0
            )
            if frame is None:
                result.failures.append(f"trial {index}: no STOP within grace + 2 s")
            else:
                result.latencies_ms.append((frame.t_ns - release_ns) / NS_PER_MS - grace_ms)
        except RigError as exc:
            result.failures.append(f"trial {index}: {exc}")
        await _recover(rig, result, index)
        _progress(label, index + 1, trials, started)
    result.elapsed_s = time.monotonic() - started
    return result


async def edge_trials(
    rig: Rig,
    trials: int,
    *,
    command: str,
    hardware: Callable[[Rig], None],
    start_kmh: float,
    rng: random.Random,
    label: str,
) -> TrialSet:
    """``trials`` safety-input edges while running; latency = first ESTOP frame - command.

    ``hardware`` is called once the ESTOP frame is seen: it opens the simulated motor power
    chain as the real key or mushroom would (done after the measurement so that the firmware's
    own reading of the chain cannot stand in for the GPIO path being measured).
    """
    result = TrialSet(label)
    started = time.monotonic()
    await rig.to_idle()
    for index in range(trials):
        try:
            await _run_at_start_speed(rig, start_kmh)
            await asyncio.sleep(rng.uniform(0.0, RANDOM_PHASE_S))
            edge_ns = time.monotonic_ns()
            await rig.panel.ok(command)
            result.rtt_ms.append(rig.panel.last_rtt_ns / NS_PER_MS)
            frame = await rig.wire.wait_for((EStop,), after_ns=edge_ns, timeout_s=2.0)
            hardware(rig)
            if frame is None:
                result.failures.append(f"trial {index}: no ESTOP within 2 s of {command!r}")
            else:
                result.latencies_ms.append((frame.t_ns - edge_ns) / NS_PER_MS)
        except RigError as exc:
            result.failures.append(f"trial {index}: {exc}")
        await _recover(rig, result, index)
        _progress(label, index + 1, trials, started)
    result.elapsed_s = time.monotonic() - started
    return result


def open_power_chain(rig: Rig) -> None:
    """The key and the mushroom stop sit in the motor power path: open it in the simulator."""
    rig.simulator.set_safety_key(False)


async def remote_stop_trials(
    rig: Rig,
    trials: int,
    *,
    sender: tuple[str, int, str, str],
    topic: str,
    start_kmh: float,
    rng: random.Random,
    label: str = "remote_stop",
) -> TrialSet:
    """``trials`` remote stops while running; latency = first STOP frame - publish call.

    ``sender`` is (host, port, username, password) of an account allowed to publish
    ``topic`` (``<prefix>/cmd/stop``). ``rtt_ms`` holds the publish call's own time (QoS 1:
    until the broker's PUBACK).
    """
    result = TrialSet(label)
    started = time.monotonic()
    host, port, username, password = sender
    async with aiomqtt.Client(
        host, port, username=username, password=password, identifier="bench-remote-stop"
    ) as client:
        await rig.to_idle()
        for index in range(trials):
            try:
                await _run_at_start_speed(rig, start_kmh)
                await asyncio.sleep(rng.uniform(0.0, RANDOM_PHASE_S))
                sent_ns = time.monotonic_ns()
                await client.publish(topic, b"PRESS", qos=1)
                result.rtt_ms.append((time.monotonic_ns() - sent_ns) / NS_PER_MS)
                frame = await rig.wire.wait_for((Stop, EStop), after_ns=sent_ns, timeout_s=5.0)
                if frame is None:
                    result.failures.append(f"trial {index}: no STOP within 5 s of cmd/stop")
                else:
                    result.latencies_ms.append((frame.t_ns - sent_ns) / NS_PER_MS)
            except RigError as exc:
                result.failures.append(f"trial {index}: {exc}")
            await _recover(rig, result, index)
            _progress(label, index + 1, trials, started)
    result.elapsed_s = time.monotonic() - started
    return result
