"""``rules.tick.replace``: a check that rewrites fields with the values they already have
returns the very same state, so a steady tick builds no new state objects."""

from __future__ import annotations

from controller.rules.model import Mode
from controller.rules.tick import replace
from tests.core.support import running_rig


def test_unchanged_fields_return_the_same_state_object() -> None:
    state = running_rig().core
    assert replace(state, mode=Mode.RUNNING, stage=state.stage) is state
    samples = tuple(sample for sample in state.speed_samples)  # equal, another object
    assert samples == state.speed_samples
    assert samples is not state.speed_samples
    assert replace(state, speed_samples=samples) is state


def test_a_changed_field_returns_a_new_state() -> None:
    state = running_rig().core
    changed = replace(state, stage=state.stage + 1)
    assert changed is not state
    assert changed.stage == state.stage + 1
    assert changed.mode is state.mode
