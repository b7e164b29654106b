"""``treadmill demo`` without a terminal, the demo broker, and the shared terminal view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from controller.tools.broker import DemoBroker
from controller.tools.view import (
    TreadmillView,
    ViewEvent,
    gauge,
    render_line,
    render_screen,
    screen_text,
    view_from_state,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_without_a_terminal_runs_the_built_in_session_and_exits_0() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli", "demo"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=REPO,
        env=env,
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    assert "no terminal: running the built-in demo session" in out
    assert "watch the telemetry: mosquitto_sub -h 127.0.0.1 -p " in out
    state_lines = [line for line in out.splitlines() if " stage " in line and " belt " in line]
    assert len(state_lines) >= 15, "about two state lines a second for the whole session"
    assert any("RUNNING fault -" in line and "stage 2" in line for line in state_lines)
    assert any("FAULTED fault grip_lost" in line for line in state_lines)
    assert "event grip_lost:" in out
    assert "event fault_cleared:" in out
    last = state_lines[-1].split("s  ", 1)[1]
    assert last.startswith("IDLE fault -")
    assert "stage 2 (cap 4) belt 0.00 km/h" in last


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
async def test_demo_broker_is_loopback_only_and_carries_messages(kind: str) -> None:
    async with DemoBroker(kind) as broker:  # type: ignore[arg-type]  # literal from the list
        assert broker.kind == kind
        assert broker.host == "127.0.0.1"
        assert broker.subscribe_hint() == (
            f"mosquitto_sub -h 127.0.0.1 -p {broker.port} -t 'treadmill/#' -v"
        )
        async with aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V311
        ) as client:
            await client.subscribe("treadmill/#")
            await client.publish("treadmill/x/state", b"{}")
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
            assert message.topic.value == "treadmill/x/state"
        # Not reachable on another address of this machine: the listener is 127.0.0.1 only.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.2", broker.port)
    assert broker.port != 0


# ------------------------------------------------------------------ view (pure)

STATE = {
    "state": "faulted",
    "stage": 1,
    "stage_name": "assisted backward walk",
    "stage_max_kmh": 2.0,
    "speed_kmh": 0.4,
    "belt_kmh": 0.35,
    "target_kmh": 2.0,
    "commanded_kmh": 0.3,
    "grip": "none",
    "safety_key": True,
    "estop": False,
    "fault": {"code": "grip_lost", "message": "Grip released. Hold the rails, then press RESET."},
    "firmware": {"link": True},
    "session": None,
    "warnings": ["grip_sensor_suspect"],
}


def test_view_line_shows_every_safety_input() -> None:
    line = render_line(view_from_state(STATE, online=True))
    assert line == (
        "online  FAULTED fault grip_lost | e-stop released key in grip none | "
        "stage 1 belt 0.35 km/h (measured 0.40, commanded 0.30, target 2.00)"
    )


def test_view_survives_malformed_payloads() -> None:
    view = view_from_state({"state": 3, "stage": "x", "belt_kmh": "fast", "fault": [1]})
    assert view.state is None
    assert view.stage is None
    assert view.belt_true_kmh is None
    assert render_line(view).startswith("? fault - | e-stop ? key ? grip ? | stage ? belt ? km/h")
    assert render_screen(view, use_colour=False)


def test_view_screen_lists_fault_advice_events_and_notes() -> None:
    view = view_from_state(
        STATE,
        events=[ViewEvent("4.3 s", "grip_lost", "Grip released")],
        notes=["  keys: q quit"],
        session_s=12.5,
        distance_m=3.25,
    )
    text = "\n".join(render_screen(view, width=80, use_colour=False, ascii_only=True))
    assert "FAULTED" in text
    assert "FAULT grip_lost" in text
    assert "Hold the rails, then press RESET." in text
    assert "4.3 s grip_lost: Grip released" in text
    assert "warnings: grip_sensor_suspect" in text
    assert "session   12.5 s" in text
    assert "keys: q quit" in text
    redraw = screen_text(["a", "b"])
    assert redraw.startswith("\x1b[H")
    assert redraw.endswith("\x1b[J")


def test_gauge_marks_the_stage_maximum() -> None:
    assert gauge(0.0, 8.0, 8, ascii_only=True, marker_kmh=4.0) == "[---|----]"
    assert gauge(4.0, 8.0, 8, ascii_only=True, marker_kmh=8.0) == "[####---|]"
    assert gauge(None, 8.0, 4, ascii_only=True) == "[----]"
    assert TreadmillView().gauge_max_kmh == 8.0


async def _demo_with_subscriber(broker: str) -> tuple[str, str, dict[str, list[bytes]]]:
    """Run ``treadmill demo --plain --broker BROKER`` and subscribe to its broker at once.

    Returns the demo's stdout, stderr and every message received per topic.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli",
        "demo",
        "--plain",
        "--broker",
        broker,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    received: dict[str, list[bytes]] = {}
    out_lines: list[str] = []
    async with asyncio.timeout(120):
        first = (await process.stdout.readline()).decode()
        out_lines.append(first)
        assert first.startswith("watch the telemetry: mosquitto_sub -h 127.0.0.1 -p "), first
        port = int(first.split(" -p ", 1)[1].split()[0])
        async with aiomqtt.Client(
            "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311, identifier="demo-test"
        ) as client:
            await client.subscribe("#")

            async def collect() -> None:
                async for message in client.messages:
                    payload = message.payload
                    assert isinstance(payload, bytes)
                    received.setdefault(message.topic.value, []).append(payload)

            collector = asyncio.create_task(collect(), name="collect")
            rest, err = await process.communicate()
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await collector
    out_lines.append(rest.decode())
    assert process.returncode == 0, "".join(out_lines) + err.decode()
    return "".join(out_lines), err.decode(), received


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
async def test_demo_publishes_state_events_and_discovery_on_its_own_broker(broker: str) -> None:
    """What ``./dev.sh demo`` shows on a fresh machine (mosquitto installed by dev.sh; amqtt
    without apt): the demo's broker carries state, events and Home Assistant discovery, and
    the demo exits cleanly (no traceback, no error line)."""
    out, err, received = await _demo_with_subscriber(broker)
    assert "Traceback" not in err, err
    assert "Traceback" not in out, out
    assert " ERROR " not in err, err
    assert "MQTT cannot connect" not in err, err
    states = [json.loads(p) for p in received.get("treadmill/demo/state", []) if p]
    assert any(s["state"] == "running" for s in states), "no running state published"
    kinds = [json.loads(p)["kind"] for p in received.get("treadmill/demo/event", [])]
    for kind in ("started", "grip_lost", "fault", "fault_cleared"):
        assert kind in kinds, f"no {kind} event on the broker: {kinds}"
    discovery = [t for t in received if t.startswith("homeassistant/")]
    assert any(t.endswith("/speed/config") for t in discovery), discovery
    assert received.get("treadmill/demo/availability", [])[-1:] == [b"offline"]
    assert received.get("treadmill/demo/diagnostics"), "no diagnostics published"
