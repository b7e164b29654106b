"""Simulated treadmill firmware: belt physics, the firmware contract, fault injection, a pty.

- :mod:`firmware_bridge.sim.physics`: belt, motor board and speed sensor (pure, time passed in).
- :mod:`firmware_bridge.sim.firmware`: :class:`SimFirmware`, the firmware state machine.
- :mod:`firmware_bridge.sim.pty`: :class:`PtySimulator`, the firmware on a real pseudo-terminal.
- :mod:`firmware_bridge.sim.cli`: ``treadmill sim``.
"""

from firmware_bridge.sim.firmware import HostFrame, InjectedFault, SimConfig, SimFault, SimFirmware
from firmware_bridge.sim.physics import BeltPhysics, PhysicsParams
from firmware_bridge.sim.pty import PtySimulator

__all__ = [
    "BeltPhysics",
    "HostFrame",
    "InjectedFault",
    "PhysicsParams",
    "PtySimulator",
    "SimConfig",
    "SimFault",
    "SimFirmware",
]
