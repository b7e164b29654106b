"""The e-stop and the safety key: their emergency stops, and the one test of an emergency input,
which keeps ESTOP going out while one is active (SR-ESTOP-1, SR-ESTOP-2, SR-STOP-3).
"""

from __future__ import annotations

from controller.rules.faults import POWER_CHAIN_FAULTS, latch
from controller.rules.model import FaultCode, Inputs, StopKind
from controller.rules.tick import Step, replace


def check_emergency_inputs(step: Step) -> None:
    """E-stop pressed or safety key out (console or firmware reading): EStop and latch
    (SR-ESTOP-1, SR-ESTOP-2); while one is active the latched emergency keeps sending ESTOP
    (SR-STOP-3)."""
    inputs = step.inputs
    if inputs.estop_pressed:
        latch(step, FaultCode.ESTOP, StopKind.EMERGENCY, "E-stop pressed")
    if not inputs.safety_key_present:
        latch(
            step,
            FaultCode.SAFETY_KEY,
            StopKind.EMERGENCY,
            "Safety key pulled out (console input)",
        )
    firmware = inputs.firmware
    if firmware is not None and not firmware.safety_key_closed:
        latch(
            step,
            FaultCode.SAFETY_KEY,
            StopKind.EMERGENCY,
            "The motor controller reads the safety key circuit open",
            follows=POWER_CHAIN_FAULTS,
        )
    if emergency_input(inputs):
        # ESTOP goes out on every tick while the e-stop is pressed or the key is out (SR-STOP-3).
        step.state = replace(step.state, fault_rest_reached=False)


def emergency_input(inputs: Inputs) -> bool:
    """The e-stop is pressed or the safety key is out (console or firmware reading)."""
    firmware = inputs.firmware
    return (
        inputs.estop_pressed
        or not inputs.safety_key_present
        or (firmware is not None and not firmware.safety_key_closed)
    )
