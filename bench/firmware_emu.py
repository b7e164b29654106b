"""Figures of the reference firmware on the emulated chip, and the controller end to end on it.

    python -m bench.firmware_emu                     # everything (about 3 minutes)
    python -m bench.firmware_emu --only chip         # the AVR ELF in simavr alone
    python -m bench.firmware_emu --only e2e --impl avr,python --trials 5

``chip`` (the AVR ELF in the simavr harness, firmware/emu/harness.c): the harness stamps, in
emulated time, when a frame's last byte reaches the chip's receiver, when the PWM duty (read
from the Timer1 registers) starts to fall and reaches 0, and when the motor enable pin D7
drops, and it times the ISR-busy pin D8 in cycles. Measured:

- worst-case time in interrupts (cycles, µs at 16 MHz) over a busy run: belt pulses at
  8 km/h, SET_SPEED at 50 Hz, GET_STATUS bursts, a flood of garbage bytes; and the longest
  main-loop pass (the gap between two WDR instructions, the loop alone feeds the watchdog);
- STATUS rate and the longest gap between two STATUS frames (emulated time);
- lease expiry → the ramp starts, and → PWM duty 0 (lease expiry = receipt of the last
  SET_SPEED + ``lease_ms``), at 2 and 8 km/h;
- ESTOP frame received → PWM duty 0 and → motor enable low.

``e2e`` (each implementation, ``treadmill run`` on its pseudo-terminal with mock GPIO): walk
at 2.0 km/h, SIGKILL the controller, time until the belt model reads rest (polled through
the runner's ``status`` command, about every 2 ms).

Figures go to docs/performance.md ("Reference firmware on the emulated chip").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.firmware_runner import (
    STANDSTILL_KMH,
    FirmwareProcess,
    Implementation,
    RunnerError,
    Session,
    implementations,
    session,
    wait_until_sync,
)
from bench.reaction import bench_stage1_edit
from bench.rig import Rig, RigOptions, poll_until
from firmware_bridge.wire.messages import Configure, EStop, FwFault, FwState, GetStatus

__all__ = ["FirmwareRig", "chip_figures", "kill_trial", "main"]

LEASE_MS = 300
DECEL_KMH_S = 3.6
ACCEL_KMH_S = 2.0
CONFIG = Configure.with_checksum(8.0, ACCEL_KMH_S, DECEL_KMH_S, LEASE_MS)
CPU_MHZ = 16
E2E_KMH = 2.0  # the top of stage 1 (config/demo.yaml), as the simulator's figure


# --------------------------------------------------------------------------- end to end


class FirmwareRig(Rig):
    """:class:`bench.rig.Rig` with the firmware in a runner process (python, native, avr).

    The belt probes read the runner's ``status`` (``belt_kmh``, ``measured_kmh``); there is no
    in-process simulator, so the wire log and :meth:`Rig.watch_belt` are not available.
    """

    def __init__(self, impl: Implementation, options: RigOptions | None = None) -> None:
        super().__init__(options)
        self.impl = impl
        self.firmware: FirmwareProcess | None = None

    async def _start_firmware(self) -> str:
        self.firmware = await asyncio.to_thread(FirmwareProcess, self.impl)
        if self.firmware.pty_path is None:
            raise RunnerError(f"{self.impl.name} printed no PTY line")
        return self.firmware.pty_path

    async def _stop_firmware(self) -> None:
        firmware, self.firmware = self.firmware, None
        if firmware is not None:
            code = await asyncio.to_thread(firmware.close)
            if code != 0:
                raise RunnerError(f"{self.impl.name} exited with {code}:\n{firmware.log()}")

    @property
    def process_status(self) -> dict[str, str]:
        if self.firmware is None:
            raise RunnerError("the firmware runner is not running")
        return self.firmware.status()

    @property
    def belt_kmh(self) -> float:
        return float(self.process_status["belt_kmh"])

    @property
    def measured_kmh(self) -> float:
        return float(self.process_status["measured_kmh"])


async def kill_trial(impl: Implementation, speed_kmh: float = E2E_KMH) -> dict[str, float]:
    """Walk at ``speed_kmh``, SIGKILL the controller: ms until the belt is at rest."""
    async with FirmwareRig(impl, RigOptions(edit=bench_stage1_edit)) as rig:
        await rig.start_belt(speed_kmh)
        t0 = time.monotonic()
        rig.service.signal(signal.SIGKILL)
        await poll_until(
            lambda: rig.belt_kmh <= STANDSTILL_KMH,
            timeout_s=10,
            what="the belt at rest after the controller was killed",
        )
        took_ms = (time.monotonic() - t0) * 1000
        await rig.service.wait(5)
        out = {"speed_kmh": speed_kmh, "stop_ms": round(took_ms, 1)}
        status = rig.process_status
        if "t_belt_rest_us" in status:
            # the emulated chip's own time from the last SET_SPEED it received to rest: the
            # same stop without the emulator's lag behind real time on a loaded host
            rest_us = int(status["t_belt_rest_us"]) - int(status["t_set_speed_us"])
            out["emulated_stop_ms"] = round(rest_us / 1000, 1)
        return out


# --------------------------------------------------------------------------- the chip


def _us(status: dict[str, str], key: str) -> int:
    return int(status[key])


def _ready(s: Session) -> None:
    s.fresh()
    s.ready(CONFIG)


def _busy_run(s: Session, seconds: float) -> None:
    """Belt pulses at 8 km/h, SET_SPEED at 50 Hz, GET_STATUS bursts and garbage."""
    _ready(s)
    s.run_at(8.0, accel_kmh_s=ACCEL_KMH_S, lease_ms=LEASE_MS, timeout_s=20)
    start = time.monotonic()
    for tick in range(round(seconds / 0.02)):
        for _ in range(4):
            s.link.send(GetStatus())
        s.link.write(bytes(range(0, 256, 7)))  # 37 bytes that are no frame at all
        # pacing at the 20 ms tick (about 8 kB/s of the 11.5 kB/s line): not a wait for a result
        time.sleep(max(0.0, start + (tick + 1) * 0.02 - time.monotonic()))
    s.link.stop_renewing()
    s.link.request(EStop())
    s.belt_at_rest()


def _status_rate(s: Session, seconds: float) -> dict[str, float]:
    _ready(s)
    a = s.process.status()
    t_end = time.monotonic() + seconds
    wait_until_sync(lambda: time.monotonic() >= t_end, timeout_s=seconds + 1, what="the window")
    b = s.process.status()
    frames = int(b["status_frames"]) - int(a["status_frames"])
    span_s = (_us(b, "emu_us") - _us(a, "emu_us")) / 1e6
    return {
        "status_per_s": round(frames / span_s, 2),
        "status_gap_max_ms": round(int(b["status_gap_max_us"]) / 1000, 3),
    }


def _lease_trial(s: Session, speed_kmh: float) -> dict[str, float]:
    _ready(s)
    s.run_at(speed_kmh, accel_kmh_s=ACCEL_KMH_S, lease_ms=LEASE_MS, timeout_s=20)
    s.link.stop_renewing()
    s.fault_latched(FwFault.LEASE_EXPIRED, timeout_s=2)
    st = s.process.wait_status(
        lambda p: (
            int(p["t_duty_zero_us"]) > int(p["t_set_speed_us"])
            and int(p["t_enable_off_us"]) > int(p["t_set_speed_us"])
        ),
        timeout_s=speed_kmh / DECEL_KMH_S + 3,
        what="PWM duty 0 after the lease",
    )
    expiry_us = _us(st, "t_set_speed_us") + int(st["lease_ms"]) * 1000
    return {
        "speed_kmh": speed_kmh,
        "expiry_to_ramp_ms": round((_us(st, "t_duty_drop_us") - expiry_us) / 1000, 3),
        "expiry_to_duty0_ms": round((_us(st, "t_duty_zero_us") - expiry_us) / 1000, 3),
        "expiry_to_enable_off_ms": round((_us(st, "t_enable_off_us") - expiry_us) / 1000, 3),
        "ramp_ms_expected": round(speed_kmh / DECEL_KMH_S * 1000, 1),
    }


def _estop_trial(s: Session, speed_kmh: float) -> dict[str, float]:
    _ready(s)
    s.run_at(speed_kmh, accel_kmh_s=ACCEL_KMH_S, lease_ms=LEASE_MS, timeout_s=20)
    s.link.request(EStop())
    s.link.stop_renewing()
    st = s.process.wait_status(
        lambda p: (
            int(p["t_estop_us"]) > 0
            and int(p["t_duty_zero_us"]) >= int(p["t_estop_us"])
            and int(p["t_enable_off_us"]) >= int(p["t_estop_us"])
        ),
        timeout_s=2,
        what="PWM duty 0 after ESTOP",
    )
    return {
        "speed_kmh": speed_kmh,
        "estop_to_duty0_us": _us(st, "t_duty_zero_us") - _us(st, "t_estop_us"),
        "estop_to_enable_off_us": _us(st, "t_enable_off_us") - _us(st, "t_estop_us"),
    }


def chip_figures(trials: int) -> dict[str, Any]:
    """Everything measured on the AVR ELF in the simavr harness."""
    avr = next(i for i in implementations() if i.name == "avr")
    if avr.missing:
        raise RunnerError(f"the emulated chip cannot run: {avr.missing}")
    out: dict[str, Any] = {}
    with session(avr) as s:
        out["status"] = _status_rate(s, 3.0)
        _busy_run(s, 5.0)
        isr = s.process.status()
        out["isr"] = {
            "isr_max_cycles": int(isr["isr_max_cycles"]),
            "isr_max_us": round(int(isr["isr_max_cycles"]) / CPU_MHZ, 2),
            "isr_count": int(isr["isr_count"]),
            "loop_max_us": int(isr["loop_max_us"]),
            "behind_max_us": int(isr["behind_max_us"]),
        }
        out["lease"] = [_lease_trial(s, v) for v in (2.0, 8.0) for _ in range(trials)]
        out["estop"] = [_estop_trial(s, 2.0) for _ in range(trials * 2)]
        out["loop_max_us"] = int(s.process.status()["loop_max_us"])  # since the last reboot
        s.fresh()
        state = s.link.latest_status().state
        if state is not FwState.IDLE:
            raise RunnerError(f"the chip did not come back to IDLE: {state}")
    return out


# --------------------------------------------------------------------------- report


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"min {min(values):.3f}, median {statistics.median(values):.3f}, max {max(values):.3f}"


def _print_chip(figures: dict[str, Any]) -> None:
    isr = figures["isr"]
    print(
        f"ISR worst case: {isr['isr_max_cycles']} cycles = {isr['isr_max_us']} µs "
        f"({isr['isr_count']} ISRs; harness behind real time at most {isr['behind_max_us']} µs); "
        f"longest main-loop pass {isr['loop_max_us']} µs in that run, "
        f"{figures['loop_max_us']} µs in the last ESTOP trial"
    )
    st = figures["status"]
    print(f"STATUS: {st['status_per_s']} /s, longest gap {st['status_gap_max_ms']} ms")
    for speed in sorted({t["speed_kmh"] for t in figures["lease"]}):
        rows = [t for t in figures["lease"] if t["speed_kmh"] == speed]
        print(
            f"lease expiry at {speed} km/h (n={len(rows)}): -> ramp starts "
            f"{_spread([t['expiry_to_ramp_ms'] for t in rows])} ms; -> PWM duty 0 "
            f"{_spread([t['expiry_to_duty0_ms'] for t in rows])} ms "
            f"(ramp {rows[0]['ramp_ms_expected']} ms); -> enable off "
            f"{_spread([t['expiry_to_enable_off_ms'] for t in rows])} ms"
        )
    rows = figures["estop"]
    print(
        f"ESTOP at 2.0 km/h (n={len(rows)}): -> PWM duty 0 "
        f"{_spread([t['estop_to_duty0_us'] for t in rows])} µs; -> enable off "
        f"{_spread([t['estop_to_enable_off_us'] for t in rows])} µs"
    )


async def _e2e(impls: list[Implementation], trials: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {}
    for impl in impls:
        if impl.missing:
            print(f"e2e {impl.name}: not run ({impl.missing})", file=sys.stderr)
            continue
        out[impl.name] = [await kill_trial(impl) for _ in range(trials)]
        stops = [t["stop_ms"] for t in out[impl.name]]
        print(
            f"controller SIGKILLed at {E2E_KMH} km/h, {impl.name} firmware: belt at rest "
            f"after {_spread(stops)} ms (n={len(stops)}; budget lease {LEASE_MS} + ramp "
            f"{E2E_KMH / DECEL_KMH_S * 1000:.0f} ms + belt lag)"
        )
        emulated = [t["emulated_stop_ms"] for t in out[impl.name] if "emulated_stop_ms" in t]
        if emulated:
            print(f"  in emulated time, last SET_SPEED received -> rest: {_spread(emulated)} ms")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.firmware_emu", description=__doc__)
    parser.add_argument("--only", choices=["chip", "e2e"], help="run one part only")
    parser.add_argument("--trials", type=int, default=5, help="trials per figure (default 5)")
    parser.add_argument("--impl", default="python,native,avr", help="e2e implementations")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    if args.only in (None, "chip"):
        figures["chip"] = chip_figures(args.trials)
        _print_chip(figures["chip"])
    if args.only in (None, "e2e"):
        wanted = set(args.impl.split(","))
        impls = [i for i in implementations() if i.name in wanted]
        figures["e2e"] = asyncio.run(_e2e(impls, args.trials))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
