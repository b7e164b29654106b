"""``treadmill monitor`` against a real mosquitto, and its message handling."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from controller.tools.monitor import Fleet
from controller.tools.view import wrap_line
from tests.broker import MosquittoBroker

REPO = Path(__file__).resolve().parents[2]

STATE = {
    "ts": "2025-03-01T12:30:05.123Z",
    "state": "running",
    "stage": 2,
    "stage_name": "supported backward walk",
    "stage_max_kmh": 3.5,
    "speed_kmh": 1.48,
    "belt_kmh": None,
    "target_kmh": 2.0,
    "commanded_kmh": 1.5,
    "grip": "both",
    "safety_key": True,
    "estop": False,
    "fault": None,
    "firmware": {"link": True},
}
EVENT = {"ts": "2025-03-01T12:30:06.000Z", "kind": "grip_warning", "message": "hold the rails"}


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as running:  # users and the documented ACL
        yield running


async def _publish(broker: MosquittoBroker, messages: list[tuple[str, bytes, bool]]) -> None:
    user, password = broker.credentials("controller")
    async with aiomqtt.Client(broker.host, broker.port, username=user, password=password) as c:
        for topic, payload, retain in messages:
            await c.publish(topic, payload, qos=1, retain=retain)


async def _read_until(process: asyncio.subprocess.Process, needle: str, timeout_s: float) -> str:
    assert process.stdout is not None
    seen = ""
    async with asyncio.timeout(timeout_s):
        while needle not in seen:
            line = await process.stdout.readline()
            if not line:
                break
            seen += line.decode()
    return seen


async def _monitor(
    broker: MosquittoBroker, tmp_path: Path, *extra: str
) -> asyncio.subprocess.Process:
    user, password = broker.credentials("dashboard")  # read-only on treadmill/#
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "monitor",
        "--host", broker.host, "--port", str(broker.port),
        "--username", user, "--password-file", str(password_file), *extra,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def _stop(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        return await process.wait()


async def test_monitor_prints_one_line_per_treadmill_and_events(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    retained = [
        ("treadmill/tm-9/availability", b"online", True),
        ("treadmill/tm-9/state", json.dumps(STATE).encode(), True),
    ]
    await _publish(broker, retained)
    process = await _monitor(broker, tmp_path)
    try:
        seen = await _read_until(process, "online  RUNNING fault -", 20)
        line = next(line for line in seen.splitlines() if "online  RUNNING fault -" in line)
        assert line == (
            "tm-9             online  RUNNING fault - | e-stop released key in grip both | "
            "stage 2 belt 1.48 km/h (measured 1.48, commanded 1.50, target 2.00)"
        )
        await _publish(broker, [("treadmill/tm-9/event", json.dumps(EVENT).encode(), False)])
        seen = await _read_until(process, "event grip_warning", 20)
        assert "tm-9             event grip_warning: hold the rails" in seen
    finally:
        code = await _stop(process)
    assert code == 0


async def test_monitor_never_publishes(broker: MosquittoBroker, tmp_path: Path) -> None:
    """A spy sees every live (non-retained) message on treadmill/# while a monitor runs and
    stops; after it has exited a sentinel is published. Only the sentinel may arrive."""
    # Its own retained state for the monitor to show (not one left by another test).
    await _publish(broker, [("treadmill/tm-9/state", json.dumps(STATE).encode(), True)])
    user, password = broker.credentials("homeassistant")  # reads treadmill/#
    async with aiomqtt.Client(broker.host, broker.port, username=user, password=password) as spy:
        await spy.subscribe("treadmill/#")
        process = await _monitor(broker, tmp_path, "--id", "tm-9")
        await _read_until(process, "RUNNING", 20)
        assert await _stop(process) == 0
        await _publish(broker, [("treadmill/sentinel/event", b"{}", False)])
        live: list[str] = []
        async with asyncio.timeout(20):
            async for message in spy.messages:
                if not message.retain:
                    live.append(message.topic.value)
                if message.topic.value == "treadmill/sentinel/event":
                    break
    assert live == ["treadmill/sentinel/event"], f"the monitor published: {live[:-1]}"


def test_fleet_handles_state_event_availability_and_garbage() -> None:
    fleet = Fleet()
    assert fleet.handle("other/tm-1/state", b"{}", 0.0) is None
    assert fleet.handle("treadmill/tm-1/availability", b"offline", 0.0) == ("tm-1", None)
    assert fleet.entries["tm-1"].online is False
    assert "OFFLINE no state yet" in fleet.entries["tm-1"].line(0.0)
    assert fleet.handle("treadmill/tm-1/state", b"not json", 0.0) == ("tm-1", None)
    assert fleet.entries["tm-1"].malformed == 1
    fleet.handle("treadmill/tm-1/state", json.dumps(STATE).encode(), 1.0)
    assert "RUNNING fault - |" in fleet.entries["tm-1"].line(2.0)
    assert "(state 9 s old)" in fleet.entries["tm-1"].line(10.0)
    changed = fleet.handle("treadmill/tm-1/event", json.dumps(EVENT).encode(), 1.0)
    assert changed is not None
    _treadmill, event = changed
    assert event is not None
    assert (event.when, event.kind, event.message) == ("12:30:06", "grip_warning", "hold the rails")
    for index in range(10):
        fleet.handle("treadmill/tm-1/event", json.dumps({**EVENT, "kind": f"k{index}"}).encode(), 1)
    assert [e.kind for e in fleet.entries["tm-1"].events] == [f"k{i}" for i in range(4, 10)]


def test_fleet_with_an_id_ignores_the_others() -> None:
    fleet = Fleet(only_id="tm-2")
    assert fleet.handle("treadmill/tm-1/state", json.dumps(STATE).encode(), 0.0) is None
    assert fleet.handle("treadmill/tm-2/state", json.dumps(STATE).encode(), 0.0) is not None
    assert list(fleet.entries) == ["tm-2"]


def test_monitor_refuses_bad_options(tmp_path: Path) -> None:
    from controller.tools.monitor import monitor_main

    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    cases = [
        (["--port", "0"], "--port 0"),
        (["--id", "a/b"], "--id 'a/b'"),
        (["--password-file", str(empty)], "needs --username"),
        (["--username", "u", "--password-file", str(empty)], "is empty"),
    ]
    for argv, expected in cases:
        err = __import__("io").StringIO()
        assert monitor_main(argv, err=err) == 2, argv
        assert expected in err.getvalue()


def test_fleet_line_puts_the_fault_first_and_wraps_instead_of_cutting() -> None:
    """At 80 columns the fault, e-stop, key and grip are on the first line; nothing is cut;
    the session's time left, the client and the stage cap are shown."""
    faulted = {
        **STATE,
        "state": "faulted",
        "fault": {"code": "grip_lost", "message": "Grip released. Hold the rails."},
        "stage_cap": 3,
        "remote_stage_cap": 2,
        "session": {"session_id": "ab", "client_id": "p-017", "elapsed_s": 300.0,
                    "remaining_s": 287.6},
    }  # fmt: skip
    fleet = Fleet()
    fleet.handle("treadmill/tm-1/availability", b"online", 0.0)
    fleet.handle("treadmill/tm-1/state", json.dumps(faulted).encode(), 0.0)
    line = fleet.entries["tm-1"].line(0.0)
    lines = wrap_line(line, 80, " " * 17)
    assert all(len(text) <= 80 for text in lines)
    assert " ".join(text.strip() for text in lines) == " ".join(line.split())  # nothing lost
    assert "FAULTED fault grip_lost" in lines[0]
    assert "e-stop released key in grip both" in " ".join(lines[:2])
    assert "stage 2 (cap 2)" in line
    assert "session 4:48 left, client p-017" in line
    assert all(text.startswith(" " * 17) for text in lines[1:])
