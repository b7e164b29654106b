"""The firmware's faults as data: for each ``FwFault`` code, when it latches, what its FAULT
``detail`` carries and how the firmware stops the belt for it (its stop category, FW-2).

This is the one definition of the stop categories. The simulated firmware stops by it, the
C core takes it from the generated ``firmware/core/msg_table.h`` (``FAULT_CATEGORY_0_MASK``),
the controller stops with an emergency stop for every category-0 fault (SR-FW-1), and the
fault table of docs/protocol.md is generated from it; tests keep all of them equal.

Example:
    >>> from firmware_bridge.wire.messages import FwFault
    >>> FAULT_SPECS[FwFault.MOTOR_FAULT].category
    <StopCategory.CUT_POWER: 0>
    >>> FwFault.LEASE_EXPIRED in CATEGORY_0_FAULTS
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Final

from firmware_bridge.wire.messages import FwFault

__all__ = ["CATEGORY_0_FAULTS", "FAULTS", "FAULT_SPECS", "FaultSpec", "StopCategory"]


class StopCategory(IntEnum):
    """How the firmware stops the belt when a fault latches (FW-2, IEC 60204-1 §9.2.2)."""

    CUT_POWER = 0
    """Category 0: motor power removed at once; a motor that may not obey a ramp is not
    asked to."""
    RAMP_THEN_CUT = 1
    """Category 1: the set-point ramps to 0 at the configured ``max_decel_kmh_s`` (a
    compiled-in default before any CONFIGURE), then motor power is removed."""


@dataclass(frozen=True)
class FaultSpec:
    """One firmware fault code: when it latches, its FAULT ``detail`` and its stop category."""

    code: FwFault
    latched_when: str
    detail: str
    category: StopCategory | None  # None only for NONE, which never latches


FAULTS: Final[tuple[FaultSpec, ...]] = (
    FaultSpec(FwFault.NONE, "(no fault; never sent in FAULT)", "-", None),
    FaultSpec(
        FwFault.LEASE_EXPIRED,
        "RUNNING and no SET_SPEED renewed the lease in time (FW-3)",
        "ms overdue when detected",
        StopCategory.RAMP_THEN_CUT,
    ),
    FaultSpec(
        FwFault.SPEED_ABOVE_CEILING,
        "SET_SPEED `speed_kmh` above the configured or compiled-in ceiling (FW-4)",
        "requested speed, 0.01 km/h",
        StopCategory.RAMP_THEN_CUT,
    ),
    FaultSpec(
        FwFault.ACCEL_ABOVE_CEILING,
        "SET_SPEED `accel_kmh_s` above the configured or compiled-in ceiling (FW-4)",
        "requested accel, 0.01 km/h/s",
        StopCategory.RAMP_THEN_CUT,
    ),
    FaultSpec(
        FwFault.NOT_CONFIGURED,
        "the stored configuration failed its self-check while enabled (FW-8)",
        "0",
        StopCategory.RAMP_THEN_CUT,
    ),
    FaultSpec(
        FwFault.SAFETY_KEY_OPEN,
        "the safety key (clip cord) circuit opened, in any state (FW-10)",
        "0",
        StopCategory.CUT_POWER,
    ),
    FaultSpec(FwFault.ESTOP, "ESTOP received (FW-5)", "0", StopCategory.CUT_POWER),
    FaultSpec(
        FwFault.SENSOR_FAULT,
        "belt speed sensor silent or implausible while driving (FW-12)",
        "0",
        StopCategory.CUT_POWER,
    ),
    FaultSpec(
        FwFault.MOTOR_FAULT,
        "the motor driver reported a fault (over-current, over-temperature) (FW-12)",
        "driver fault register, 0 if none",
        StopCategory.CUT_POWER,
    ),
    FaultSpec(
        FwFault.BAD_FRAME_FLOOD,
        "too many corrupt frames in a window while RUNNING (FW-13)",
        "corrupt frames in the window",
        StopCategory.RAMP_THEN_CUT,
    ),
    FaultSpec(
        FwFault.OVERSPEED,
        "measured speed above the ramped set-point by more than the margin (FW-12)",
        "measured speed, 0.01 km/h",
        StopCategory.CUT_POWER,
    ),
    FaultSpec(
        FwFault.INTERNAL,
        "a firmware self-check failed (FW-12)",
        "self-check id, firmware-specific",
        StopCategory.CUT_POWER,
    ),
)
"""Every ``FwFault`` code in order, NONE first (docs/protocol.md's fault table)."""

FAULT_SPECS: Final[Mapping[FwFault, FaultSpec]] = MappingProxyType({s.code: s for s in FAULTS})
""":data:`FAULTS` by code."""

CATEGORY_0_FAULTS: Final = frozenset(
    spec.code for spec in FAULTS if spec.category is StopCategory.CUT_POWER
)
"""The faults for which the firmware cuts motor power at once (category 0, FW-2)."""
