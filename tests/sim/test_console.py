"""The simulated console-driven treadmill and its key-circuit relay (key-relay mode)."""

from __future__ import annotations

import random

import pytest
from gpiozero.pins.mock import MockFactory

from controller.adapters.gpio.keyrelay import KeyRelayError, KeyRelayOutput
from firmware_bridge.sim.console import ConsoleParams, ConsoleTreadmill, KeyRelay
from firmware_bridge.sim.physics import PhysicsParams


def test_SR_MON_1_relay_holds_only_while_toggled_and_drops_after_the_hold_off() -> None:
    relay = KeyRelay(hold_off_ms=100, pull_in_toggles=3, release_ms=10)
    assert not relay.closed(0)
    relay.toggle(0)
    relay.toggle(20)
    assert not relay.closed(21)  # not charged yet
    relay.toggle(40)
    assert relay.closed(41)
    assert relay.closed(150)
    assert not relay.closed(151)
    assert relay.opens_at_ms() == 150


def test_SR_MON_1_toggles_too_far_apart_never_pull_the_relay_in() -> None:
    relay = KeyRelay(hold_off_ms=100, pull_in_toggles=3, release_ms=10)
    for t in range(0, 2000, 150):
        relay.toggle(t)
        assert not relay.closed(t)


def console() -> ConsoleTreadmill:
    params = ConsoleParams(physics=PhysicsParams(walker_on_belt=False))
    return ConsoleTreadmill(params, random.Random(1), now_ms=0)  # noqa: S311 - reproducible


def test_SR_MON_1_console_cannot_start_without_the_relay() -> None:
    treadmill = console()
    treadmill.press("start", 100)
    treadmill.advance(2000)
    assert treadmill.true_speed_kmh == 0.0
    assert not treadmill.running


def test_SR_MON_1_relay_dropping_stops_the_belt_and_the_console_forgets_its_speed() -> None:
    treadmill = console()
    now = 0
    for now in range(0, 200, 20):
        treadmill.toggle_relay(now)
    treadmill.press("start", now)
    treadmill.set_target(3.0, now)
    while now < 6000:
        now += 20
        treadmill.toggle_relay(now)
    assert treadmill.true_speed_kmh == pytest.approx(3.0, abs=0.05)
    treadmill.advance(now + 3000)  # no more toggles
    assert treadmill.true_speed_kmh == 0.0
    assert not treadmill.running
    assert treadmill.circuit_opened_ms == pytest.approx(now + 111, abs=1)


def test_SR_MON_1_relay_output_toggles_a_gpio_and_releases_it_low() -> None:
    factory = MockFactory()
    relay = KeyRelayOutput(20, pin_factory=factory)
    seen: list[bool] = []
    relay.on_toggle = lambda: seen.append(relay.value)
    relay.toggle()
    relay.toggle()
    assert seen == [True, False]
    assert relay.toggles == 2
    relay.close()
    relay.close()
    relay.toggle()  # closed: does nothing
    assert relay.toggles == 2
    with pytest.raises(KeyRelayError, match="BCM pin 99"):
        KeyRelayOutput(99, pin_factory=factory)
