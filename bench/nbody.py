"""A single-core CPython yardstick: the Computer Language Benchmarks Game's n-body simulation.

Used to scale the benchmark figures of one machine to another (docs/performance.md): run it
on both, divide. The program is the Benchmarks Game's plain-Python n-body (five bodies, pairs
precomputed, ``dt = 0.01``), so its run time can also be compared with published figures
for other machines::

    python -m bench.nbody 1000000        # steps; prints the seconds and the energy check

Linear in the number of steps.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main", "run"]

PI = 3.14159265358979323
SOLAR_MASS = 4 * PI * PI
DAYS_PER_YEAR = 365.24

Body = tuple[list[float], list[float], float]  # position, velocity, mass


def _bodies() -> list[Body]:
    return [
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], SOLAR_MASS),  # sun
        (  # jupiter
            [4.84143144246472090e00, -1.16032004402742839e00, -1.03622044471123109e-01],
            [
                1.66007664274403694e-03 * DAYS_PER_YEAR,
                7.69901118419740425e-03 * DAYS_PER_YEAR,
                -6.90460016972063023e-05 * DAYS_PER_YEAR,
            ],
            9.54791938424326609e-04 * SOLAR_MASS,
        ),
        (  # saturn
            [8.34336671824457987e00, 4.12479856412430479e00, -4.03523417114321381e-01],
            [
                -2.76742510726862411e-03 * DAYS_PER_YEAR,
                4.99852801234917238e-03 * DAYS_PER_YEAR,
                2.30417297573763929e-05 * DAYS_PER_YEAR,
            ],
            2.85885980666130812e-04 * SOLAR_MASS,
        ),
        (  # uranus
            [1.28943695621391310e01, -1.51111514016986312e01, -2.23307578892655734e-01],
            [
                2.96460137564761618e-03 * DAYS_PER_YEAR,
                2.37847173959480950e-03 * DAYS_PER_YEAR,
                -2.96589568540237556e-05 * DAYS_PER_YEAR,
            ],
            4.36624404335156298e-05 * SOLAR_MASS,
        ),
        (  # neptune
            [1.53796971148509165e01, -2.59193146099879641e01, 1.79258772950371181e-01],
            [
                2.68067772490389322e-03 * DAYS_PER_YEAR,
                1.62824170038242295e-03 * DAYS_PER_YEAR,
                -9.51592254519715870e-05 * DAYS_PER_YEAR,
            ],
            5.15138902046611451e-05 * SOLAR_MASS,
        ),
    ]


def _energy(bodies: list[Body]) -> float:
    e = 0.0
    for i, ((x1, y1, z1), v1, m1) in enumerate(bodies):
        e += m1 * (v1[0] * v1[0] + v1[1] * v1[1] + v1[2] * v1[2]) / 2.0
        for (x2, y2, z2), _, m2 in bodies[i + 1 :]:
            dx, dy, dz = x1 - x2, y1 - y2, z1 - z2
            e -= (m1 * m2) / ((dx * dx + dy * dy + dz * dz) ** 0.5)
    return e


def _offset_momentum(bodies: list[Body]) -> None:
    px = py = pz = 0.0
    for _, (vx, vy, vz), m in bodies:
        px -= vx * m
        py -= vy * m
        pz -= vz * m
    _, v, m = bodies[0]
    v[0], v[1], v[2] = px / m, py / m, pz / m


def _advance(bodies: list[Body], steps: int, dt: float) -> None:
    pairs = [(bodies[i], bodies[j]) for i in range(len(bodies)) for j in range(i + 1, len(bodies))]
    for _ in range(steps):
        for ([x1, y1, z1], v1, m1), ([x2, y2, z2], v2, m2) in pairs:
            dx, dy, dz = x1 - x2, y1 - y2, z1 - z2
            mag = dt * ((dx * dx + dy * dy + dz * dz) ** (-1.5))
            b1m, b2m = m1 * mag, m2 * mag
            v1[0] -= dx * b2m
            v1[1] -= dy * b2m
            v1[2] -= dz * b2m
            v2[0] += dx * b1m
            v2[1] += dy * b1m
            v2[2] += dz * b1m
        for r, (vx, vy, vz), _ in bodies:
            r[0] += dt * vx
            r[1] += dt * vy
            r[2] += dt * vz


def run(steps: int) -> tuple[float, float, float]:
    """Seconds for ``steps`` steps, and the energy before and after (the correctness check)."""
    bodies = _bodies()
    _offset_momentum(bodies)
    before = _energy(bodies)
    start = time.perf_counter()
    _advance(bodies, steps, 0.01)
    elapsed = time.perf_counter() - start
    return elapsed, before, _energy(bodies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nbody", description=__doc__)
    parser.add_argument("steps", type=int, nargs="?", default=1_000_000)
    args = parser.parse_args(argv)
    elapsed, before, after = run(args.steps)
    print(f"{args.steps} steps in {elapsed:.2f} s; energy {before:.9f} -> {after:.9f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
