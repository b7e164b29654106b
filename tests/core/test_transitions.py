"""The mode-transition table (SR-MODE-3) and the diagram generated from it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.rules import transitions
from controller.rules.model import Button, FaultCode, Mode, Stop
from controller.rules.transitions import MODE_TRANSITIONS, is_allowed, state_diagram
from tests.core.support import Rig, faulted_rig, idle_rig, running_rig, stopping_rig

SAFETY_DOC = Path(__file__).resolve().parents[2] / "docs" / "safety.md"
BEGIN = "<!-- mode-transitions:begin (generated from controller/rules/transitions.py) -->\n"
END = "<!-- mode-transitions:end -->"


def test_SR_MODE_3_the_diagram_in_the_safety_doc_is_generated_from_the_table() -> None:
    text = SAFETY_DOC.read_text(encoding="utf-8")
    shown = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert shown == state_diagram(), (
        "docs/safety.md's mode diagram differs from the table: paste the text of "
        "controller.rules.transitions.state_diagram() between the mode-transitions markers"
    )


def test_SR_MODE_3_the_table_reaches_every_mode_and_every_mode_can_fault() -> None:
    assert {t.target for t in MODE_TRANSITIONS} == set(Mode)
    for mode in Mode:
        assert mode is Mode.FAULTED or is_allowed(mode, Mode.FAULTED)
    assert not is_allowed(Mode.FAULTED, Mode.RUNNING)  # only a RESET leaves FAULTED
    assert not is_allowed(Mode.IDLE, Mode.IDLE)  # a mode change changes the mode


def test_SR_MODE_3_a_mode_change_missing_from_the_table_latches_internal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = idle_rig()
    allowed = transitions.ALLOWED - {(Mode.IDLE, Mode.RUNNING)}
    monkeypatch.setattr(transitions, "ALLOWED", allowed)
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.FAULTED
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.INTERNAL
    assert "idle -> running (start_button) is not in the mode-transition table" in (
        decision.state.fault.message
    )
    assert isinstance(decision.motion, Stop)  # a controlled stop, not an emergency stop
    moved = [e.details for e in decision.events if e.kind == "transition"]
    assert moved == [{"from": "idle", "to": "faulted", "reason": "internal"}]


def test_SR_MODE_3_every_transition_the_core_makes_is_in_the_table() -> None:
    """Every button in every mode, with and without the e-stop: each reported mode change is
    an edge of the table and the fail-safe path never fires."""
    rigs: dict[str, Callable[[], Rig]] = {
        "idle": idle_rig,
        "running": running_rig,
        "stopping": stopping_rig,
        "faulted": faulted_rig,
    }
    seen: set[tuple[str, str]] = set()
    for (name, make), button, estop in itertools.product(
        rigs.items(), [*Button, None], (False, True)
    ):
        rig = make()
        rig.estop = estop
        if button is None:
            rig.tick()
        else:
            rig.press(button)
        rig.estop = False
        rig.run_ms(2000)
        rig.press(Button.RESET)
        rig.run_ms(200)
        for decision in rig.history:
            assert decision.state.fault is None or (
                decision.state.fault.code is not FaultCode.INTERNAL
            ), (name, button, estop)
        for event in rig.events("transition"):
            source = Mode(str(event.details["from"]))
            target = Mode(str(event.details["to"]))
            assert is_allowed(source, target), (name, button, estop, event)
            seen.add((source.value, target.value))
    assert len(seen) >= 5
