"""Key-relay mode: relay hold-off and stop time when the control loop stops toggling.

Pure simulation (``firmware_bridge.sim.console``), simulated time, no service: the loop
toggles the relay output every 20 ms (50 Hz) while the console runs the belt at a speed,
then stops toggling at t0 (a hang, a crash, or the core deciding to stop). Measured from t0:
when the key circuit opens, when the belt is at rest (<= 0.1 km/h), and the distance.

    .venv/bin/python -m bench.keyrelay
"""

from __future__ import annotations

import random

from firmware_bridge.sim.console import ConsoleParams, ConsoleTreadmill
from firmware_bridge.sim.physics import PhysicsParams

TICK_MS = 20
REST_KMH = 0.1


def measure(speed_kmh: float, hold_off_ms: float = 100.0) -> tuple[float, float, float]:
    """(relay open after t0 ms, belt at rest after t0 ms, distance m) from ``speed_kmh``."""
    params = ConsoleParams(hold_off_ms=hold_off_ms, physics=PhysicsParams(walker_on_belt=False))
    rng = random.Random(1)  # noqa: S311 - a reproducible simulation, not cryptography
    console = ConsoleTreadmill(params, rng, now_ms=0)
    now = 0
    for now in range(0, 1000, TICK_MS):
        console.toggle_relay(now)
    console.press("start", now)
    console.set_target(speed_kmh, now)
    end = now + 30_000
    while now < end:
        now += TICK_MS
        console.toggle_relay(now)
    t0 = now + TICK_MS - 1  # the tick that never comes: the last toggle was at `now`
    start_m = console.physics.distance_m
    opened = rest = None
    t = now
    while rest is None and t < t0 + 20_000:
        t += 1
        console.advance(t)
        if opened is None and not console.key_circuit_closed:
            opened = t - t0
        if console.true_speed_kmh <= REST_KMH and opened is not None:
            rest = t - t0
    if opened is None or rest is None:
        raise RuntimeError(f"the belt did not stop from {speed_kmh} km/h")
    return float(opened), float(rest), console.physics.distance_m - start_m


def main() -> None:
    print("key-relay mode, 50 Hz toggling stops at t0 (relay hold-off 100 ms, release 10 ms)")
    print("speed km/h | relay open after t0 | belt at rest after t0 | distance")
    for speed in (1.5, 2.0, 3.5, 5.5, 8.0):
        opened, rest, distance = measure(speed)
        print(f"{speed:10.1f} | {opened:16.0f} ms | {rest:18.0f} ms | {distance:6.2f} m")


if __name__ == "__main__":
    main()
