"""Builders and a small rig for driving the pure safety core with explicit times.

The :class:`Rig` keeps the core's state and a clock, builds :class:`Inputs` from a few
knobs, and models an ideal belt: unless ``measured_kmh`` is set, the measured speed
equals the speed the core commanded at the previous tick.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from controller.rules.core import decide, initial_state
from controller.rules.model import (
    Button,
    CoreState,
    Decision,
    EStop,
    Event,
    FaultCode,
    FirmwareState,
    FirmwareStatus,
    GripLossAction,
    Inputs,
    LinkHealth,
    LocalCommand,
    Mode,
    Press,
    RemoteCommand,
    SafetyConfig,
    SelectStage,
    SetSpeed,
    StageConfig,
    Stop,
)

TICK_MS = 20
CHECKSUM = 0x1234ABCD
BOOT_ID = 7

#: The quick first pass of the mutation run (.ci/mutation.sh, tests/core/conftest.py):
#: exhaustive tests that take tens of seconds check a stride of their cases. Its survivors are
#: re-run against the full tests.
MUTATION_QUICK = os.environ.get("MUTATION_QUICK") == "1"
QUICK_STRIDE = 7


def stage(
    number: int,
    *,
    max_kmh: float = 2.0,
    start_kmh: float = 0.5,
    accel_kmh_s: float = 0.2,
    decel_kmh_s: float = 0.4,
    hands: int = 1,
    action: GripLossAction = GripLossAction.STOP_LATCH,
    grace_ms: int = 300,
    slow_kmh: float = 0.0,
    clip: bool = True,
    name: str | None = None,
) -> StageConfig:
    return StageConfig(
        number=number,
        name=name if name is not None else f"stage {number}",
        max_kmh=max_kmh,
        start_kmh=start_kmh,
        accel_kmh_s=accel_kmh_s,
        decel_kmh_s=decel_kmh_s,
        grip_hands_required=hands,
        on_grip_loss=action,
        grip_grace_ms=grace_ms,
        grip_slow_kmh=slow_kmh,
        clip_required=clip,
    )


# The shipped default table (docs/safety.md), plus a SLOW stage variant used by tests.
DEFAULT_STAGES = (
    stage(
        1,
        max_kmh=2.0,
        accel_kmh_s=0.2,
        decel_kmh_s=0.4,
        hands=1,
        grace_ms=300,
        name="assisted backward walk",
    ),
    stage(
        2,
        max_kmh=3.5,
        accel_kmh_s=0.3,
        decel_kmh_s=0.5,
        hands=1,
        grace_ms=800,
        name="supported backward walk",
    ),
    stage(
        3,
        max_kmh=5.5,
        accel_kmh_s=0.4,
        decel_kmh_s=0.6,
        hands=1,
        action=GripLossAction.WARN,
        grace_ms=500,
        name="fast backward walk",
    ),
    stage(
        4,
        max_kmh=8.0,
        accel_kmh_s=0.5,
        decel_kmh_s=0.8,
        hands=0,
        action=GripLossAction.NONE,
        grace_ms=0,
        name="backward jog",
    ),
)


def make_config(*stages: StageConfig, **overrides: object) -> SafetyConfig:
    config = SafetyConfig(stages=stages or DEFAULT_STAGES, machine_max_kmh=16.0)
    return replace(config, **overrides)  # type: ignore[arg-type]  # test-only keyword overrides


DEFAULT_CONFIG = make_config()


def single_stage_config(**stage_overrides: object) -> SafetyConfig:
    """A one-stage table: the stage under test is stage 1."""
    return make_config(stage(1, **stage_overrides))  # type: ignore[arg-type]  # keyword overrides


def status(
    received_ms: int,
    measured_kmh: float = 0.0,
    *,
    state: FirmwareState = FirmwareState.IDLE,
    fault_code: int = 0,
    key_closed: bool = True,
    checksum: int = CHECKSUM,
    boot_id: int = BOOT_ID,
    commanded_kmh: float = 0.0,
) -> FirmwareStatus:
    return FirmwareStatus(
        received_ms=received_ms,
        measured_kmh=measured_kmh,
        commanded_kmh=commanded_kmh,
        state=state,
        fault_code=fault_code,
        safety_key_closed=key_closed,
        config_checksum=checksum,
        expected_config_checksum=CHECKSUM,
        boot_id=boot_id,
    )


@dataclass
class Rig:
    """Drives the core tick by tick with an ideal belt and explicit time."""

    config: SafetyConfig = DEFAULT_CONFIG
    state: CoreState | None = None
    now_ms: int = 1000
    grip: tuple[bool, bool] = (True, True)
    estop: bool = False
    key: bool = True
    fw_key: bool = True
    fw_state: FirmwareState = FirmwareState.IDLE
    fw_fault: int = 0
    boot_id: int = BOOT_ID
    checksum: int = CHECKSUM
    link: str = "fresh"  # fresh | stale | none
    measured_kmh: float | None = None  # None: the belt follows the last command exactly
    # The firmware's own ramped set-point in STATUS; None: an ideal firmware, whose set-point
    # is the speed the core commanded at the previous tick while RUNNING, and 0 otherwise.
    fw_commanded_kmh: float | None = None
    stage_cap: int = 4
    link_health: LinkHealth | None = None  # None: no bridge reports on the link
    history: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = initial_state(self.config)

    @property
    def core(self) -> CoreState:
        assert self.state is not None
        return self.state

    def firmware(self) -> FirmwareStatus | None:
        if self.link == "none":
            return None
        received = self.now_ms if self.link == "fresh" else self.now_ms - self.config.stale_ms - 1
        measured = self.core.commanded_kmh if self.measured_kmh is None else self.measured_kmh
        return status(
            received,
            measured,
            state=self.fw_state,
            fault_code=self.fw_fault,
            key_closed=self.fw_key,
            checksum=self.checksum,
            boot_id=self.boot_id,
            commanded_kmh=self._fw_setpoint_kmh(),
        )

    def _fw_setpoint_kmh(self) -> float:
        if self.fw_commanded_kmh is not None:
            return self.fw_commanded_kmh
        return self.core.commanded_kmh if self.core.mode is Mode.RUNNING else 0.0

    def inputs(
        self, local: tuple[LocalCommand, ...] = (), remote: tuple[RemoteCommand, ...] = ()
    ) -> Inputs:
        return Inputs(
            grip_left=self.grip[0],
            grip_right=self.grip[1],
            estop_pressed=self.estop,
            safety_key_present=self.key,
            firmware=self.firmware(),
            local=local,
            remote=remote,
            stage_cap=self.stage_cap,
            link=self.link_health,
        )

    def tick(
        self,
        *local: LocalCommand,
        remote: tuple[RemoteCommand, ...] = (),
        dt_ms: int = TICK_MS,
    ) -> Decision:
        self.now_ms += dt_ms
        decision = decide(self.core, self.inputs(local, remote), self.config, self.now_ms)
        self.state = decision.state
        self.history.append(decision)
        return decision

    def press(self, button: Button, dt_ms: int = TICK_MS) -> Decision:
        return self.tick(Press(button), dt_ms=dt_ms)

    def run_ms(self, duration_ms: int, dt_ms: int = TICK_MS) -> list[Decision]:
        decisions = []
        end = self.now_ms + duration_ms
        while self.now_ms < end:
            decisions.append(self.tick(dt_ms=dt_ms))
        return decisions

    def events(self, kind: str) -> list[Event]:
        return [e for d in self.history for e in d.events if e.kind == kind]


def idle_rig(config: SafetyConfig = DEFAULT_CONFIG, stage_number: int = 1, **knobs: object) -> Rig:
    rig = Rig(config=config, **knobs)  # type: ignore[arg-type]  # keyword knobs of the rig
    rig.tick()
    if stage_number != 1:
        rig.tick(SelectStage(stage_number))
    assert rig.core.mode is Mode.IDLE, rig.core
    assert rig.core.stage == stage_number
    return rig


#: Upper bound on the ticks a test helper waits for a ramp: the slowest ramp in the tests
#: (0.01 km/h/s to 25 km/h) takes 2,500 s. A mutant that stops a ramp must fail, not hang.
MAX_WAIT_TICKS = 150_000


def tick_while(rig: Rig, condition: Callable[[], bool]) -> None:
    """Tick ``rig`` while ``condition()`` holds; fail if it still holds after
    :data:`MAX_WAIT_TICKS` ticks."""
    for _ in range(MAX_WAIT_TICKS):
        if not condition():
            return
        rig.tick()
    raise AssertionError(f"still waiting after {MAX_WAIT_TICKS} ticks: {rig.core}")


def running_rig(
    config: SafetyConfig = DEFAULT_CONFIG, stage_number: int = 1, settle: bool = True
) -> Rig:
    """A rig RUNNING at ``stage_number``, by default settled at the start speed."""
    rig = idle_rig(config, stage_number)
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.RUNNING, decision.events
    if settle:
        tick_while(rig, lambda: rig.core.commanded_kmh < rig.core.target_kmh)
        rig.tick()
    return rig


def stopping_rig(config: SafetyConfig = DEFAULT_CONFIG, stage_number: int = 1) -> Rig:
    rig = running_rig(config, stage_number)
    rig.press(Button.STOP)
    assert rig.core.mode is Mode.STOPPING
    return rig


def faulted_rig(
    config: SafetyConfig = DEFAULT_CONFIG, stage_number: int = 1, *, running: bool = True
) -> Rig:
    """A rig FAULTED, belt at rest, all inputs healthy again.

    Running at a grip stop stage: GRIP_LOST; running elsewhere: LINK_STALE (both controlled
    stops); not running: ESTOP (emergency stop).
    """
    rig = running_rig(config, stage_number) if running else idle_rig(config, stage_number)
    stage_config = config.stages[stage_number - 1]
    if (
        running
        and stage_config.grip_hands_required
        and stage_config.on_grip_loss is GripLossAction.STOP_LATCH
    ):
        rig.grip = (False, False)
        rig.run_ms(stage_config.grip_grace_ms + 40)
        rig.grip = (True, True)
    elif running:
        rig.link = "stale"
        rig.tick()
        rig.link = "fresh"
    else:
        rig.estop = True
        rig.tick()
        rig.estop = False
    assert rig.core.mode is Mode.FAULTED
    tick_while(rig, lambda: rig.core.commanded_kmh > 0.0)
    rig.tick()
    return rig


def fault_code(decision: Decision) -> FaultCode | None:
    fault = decision.state.fault
    return None if fault is None else fault.code


def is_stop(decision: Decision) -> bool:
    return isinstance(decision.motion, Stop)


def is_estop(decision: Decision) -> bool:
    return isinstance(decision.motion, EStop)


def is_set_speed(decision: Decision) -> bool:
    return isinstance(decision.motion, SetSpeed)


def reset_waiting_rig(config: SafetyConfig) -> tuple[Rig, Decision]:
    """An e-stop latched and released, the firmware in FAULT (code 6) and RESET pressed: the
    reset is armed and waits for the firmware to clear its fault (SR-RESET-3)."""
    rig = Rig(config=config)
    rig.tick()
    rig.estop = True
    rig.tick()
    rig.estop = False
    rig.run_ms(100)
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 6
    rig.tick()
    armed = rig.press(Button.RESET)
    assert armed.state.reset_armed_ms == rig.now_ms
    return rig, armed
