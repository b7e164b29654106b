"""Fault matrix: the MQTT broker and what arrives through it (docs/faults.md).

MQTT is never on the safety path: a broker that dies or a flood of commands must not change
what the belt does, and the control loop must keep its rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from bench.conditions import broker_condition, write_secret
from bench.rig import MqttTarget, Rig, poll_until
from tests.broker import MosquittoBroker, start_or_fail
from tests.faults.conftest import Observations
from tests.faults.support import fault_options, hold_and_watch

pytestmark = pytest.mark.slow

PREFIX = "treadmill/demo"  # treadmill.id in config/demo.yaml


class StateMonitor:
    """A dashboard client on ``<prefix>/state`` that reconnects by itself."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.received: list[tuple[int, dict[str, object]]] = []  # (monotonic ns, payload)
        self.connects = 0
        self._task = asyncio.create_task(self._run(), name="state-monitor")

    async def _run(self) -> None:
        user, password = self.broker.credentials("dashboard")
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host, self.broker.port, username=user, password=password
                ) as client:
                    self.connects += 1
                    await client.subscribe(f"{PREFIX}/state")
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self.received.append((time.monotonic_ns(), json.loads(payload)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)  # broker gone: retry, as a dashboard does

    def count_since(self, t_ns: int) -> int:
        return sum(1 for t, _ in self.received if t >= t_ns)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def broker_with_credentials(
    workdir: Path,
) -> AsyncIterator[tuple[MosquittoBroker, MqttTarget]]:
    broker = MosquittoBroker(workdir / "mosquitto")
    await asyncio.to_thread(start_or_fail, broker)
    try:
        user, password = broker.credentials("controller")
        credentials = workdir / "controller.credentials"
        await asyncio.to_thread(write_secret, credentials, f"{user}:{password}\n")
        yield broker, MqttTarget(broker.host, broker.port, credentials)
    finally:
        await asyncio.to_thread(broker.close)


async def test_broker_killed_and_restarted_belt_unaffected_telemetry_resumes(
    tmp_path: Path, observations: Observations
) -> None:
    async with (
        broker_with_credentials(tmp_path) as (broker, target),
        Rig(fault_options(mqtt=target)) as rig,
    ):
        monitor = StateMonitor(broker)
        try:
            await rig.start_belt(1.5)
            await rig.wait_status(
                lambda s: bool(s["link"]["mqtt"]["connected"]), timeout_s=10, what="MQTT up"
            )
            before = time.monotonic_ns()
            await poll_until(
                lambda: monitor.count_since(before) > 0, timeout_s=10, what="state on MQTT"
            )
            speed = rig.belt_kmh
            await asyncio.to_thread(broker.kill)
            killed = time.monotonic_ns()
            outage_watch = rig.watch_belt()
            await rig.wait_status(
                lambda s: not s["link"]["mqtt"]["connected"], timeout_s=15, what="MQTT down"
            )
            low = min(v for _, v in outage_watch.samples) if outage_watch.samples else speed
            peak = await hold_and_watch(rig, 2.0)
            await outage_watch.stop()
            low = min([low, *(v for _, v in outage_watch.samples)])
            state = await rig.status()
            assert state["state"] == "running", state["fault"]
            assert state["fault"] is None
            assert abs(peak - speed) <= 0.2, (speed, low, peak)
            assert abs(low - speed) <= 0.3, (speed, low, peak)

            await asyncio.to_thread(broker.start)
            restarted = time.monotonic_ns()
            await poll_until(
                lambda: monitor.count_since(restarted) > 0,
                timeout_s=60,
                what="state on MQTT after the broker restart",
            )
            first_t, first_after = next((t, p) for t, p in monitor.received if t >= restarted)
            resumed_ms = (first_t - restarted) / 1e6
            assert first_after["state"] == "running"
            state = await rig.status()
            assert state["state"] == "running"
            assert state["fault"] is None
            observations.record(
                "test_broker_killed_and_restarted_belt_unaffected_telemetry_resumes",
                belt_kmh=round(speed, 2),
                belt_during_outage_kmh=[round(low, 2), round(peak, 2)],
                outage_s=round((restarted - killed) / 1e9, 1),
                telemetry_resumed_after_restart_ms=round(resumed_ms),
                mqtt_connects=state["link"]["mqtt"]["connects"],
            )
        finally:
            await monitor.close()


async def test_mqtt_command_flood_has_no_effect_and_loop_keeps_rate(
    tmp_path: Path, observations: Observations
) -> None:
    async with broker_condition("flooded", tmp_path / "broker", flood_rate_per_s=2000) as env:
        async with Rig(fault_options(mqtt=env.mqtt)) as rig:
            await rig.start_belt(1.5)
            speed = rig.belt_kmh
            await rig.wait_status(
                lambda s: int(s["link"]["mqtt"]["commands_rejected"]) > 100,
                timeout_s=20,
                what="the flood reaching the service",
            )
            before = await rig.status()
            t0 = time.monotonic()
            watch = rig.watch_belt()
            await asyncio.sleep(10.0)  # an observation window under the flood
            await watch.stop()
            after = await rig.status()
            elapsed_s = time.monotonic() - t0
        loop0, loop1 = before["link"]["loop"], after["link"]["loop"]
        ticks_per_s = (loop1["ticks"] - loop0["ticks"]) / elapsed_s
        rejected = (
            after["link"]["mqtt"]["commands_rejected"] - before["link"]["mqtt"]["commands_rejected"]
        )
        speeds = [v for _, v in watch.samples]
        assert after["state"] == "running", after["fault"]
        assert after["fault"] is None, after["fault"]
        assert after["target_kmh"] == before["target_kmh"] == 1.5
        assert after["stage"] == 1
        assert max(speeds) <= speed + 0.2, (speed, max(speeds))
        assert min(speeds) >= speed - 0.3, (speed, min(speeds))
        assert rejected > 200, f"only {rejected} commands rejected in {elapsed_s:.0f} s"
        assert rig.service.kinds["command_rejected"] > 0
        # The loop keeps its 50 Hz rate (within 10 %) under the flood.
        assert ticks_per_s >= 45.0, f"{ticks_per_s:.1f} ticks/s under the flood"
    observations.record(
        "test_mqtt_command_flood_has_no_effect_and_loop_keeps_rate",
        flood_sent_per_s=env.flooder.get("rate_per_s"),
        rejected_per_s=round(rejected / elapsed_s),
        dropped=after["link"]["mqtt"]["commands_dropped"],
        ticks_per_s=round(ticks_per_s, 1),
        missed_ticks=loop1["missed_ticks"] - loop0["missed_ticks"],
        lateness_p99_ms=loop1["lateness_p99_ms"],
        lateness_max_ms=loop1["lateness_max_ms"],
        belt_range_kmh=[round(min(speeds), 2), round(max(speeds), 2)],
    )
