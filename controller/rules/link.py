"""The serial link to the firmware: link lost or set up again, link quality, and the settle
time before a START (SR-LINK-1..3).
"""

from __future__ import annotations

from controller.rules.faults import latch
from controller.rules.model import (
    CoreState,
    FaultCode,
    Inputs,
    LinkHealth,
    Mode,
    SafetyConfig,
    StopKind,
)
from controller.rules.tick import Step, replace


def check_link(step: Step) -> None:
    """Link lost or set up again, degraded link, settle time for START (SR-LINK-1..3)."""
    link = step.inputs.link
    if link is None:
        return
    state = step.state
    adopted = state.link_session
    renewed = adopted is not None and link.session != adopted
    rebooted = (
        link.boot_id is not None and state.boot_id is not None and link.boot_id != state.boot_id
    )
    if rebooted:
        # The firmware's HELLO announced a new boot: that is the cause, the link loss that
        # goes with it only its consequence (SR-FW-2).
        latch(
            step,
            FaultCode.FIRMWARE_REBOOT,
            StopKind.CONTROLLED,
            f"The motor controller restarted (boot id {state.boot_id} -> {link.boot_id})",
        )
    elif (not link.up or renewed) and state.mode is not Mode.IDLE:
        # The belt may move (RUNNING, STOPPING) or a fault is latched: motion never resumes
        # on a reconnect; only RESET and START bring it back (SR-LINK-1).
        why = (
            "the serial link is down"
            if not link.up
            else f"the serial link was set up again (session {adopted} -> {link.session})"
        )
        latch(step, FaultCode.LINK_STALE, StopKind.CONTROLLED, f"Firmware link lost: {why}")
    if adopted is None or step.state.mode is Mode.IDLE:
        step.state = replace(step.state, link_session=link.session)
    settled = link.up and not renewed and step.fresh is not None
    since_ms = state.link_settled_since_ms if settled else None
    if settled and since_ms is None:
        since_ms = step.now_ms
    step.state = replace(step.state, link_settled_since_ms=since_ms)
    _check_link_quality(step, link)


def _check_link_quality(step: Step, link: LinkHealth) -> None:
    """Share of the firmware's frames missed per window above ``link_loss_max`` (SR-LINK-3)."""
    config = step.config
    window = step.state.link_window
    now_ms = step.now_ms
    current = (now_ms, link.frames_received, link.frames_missed)
    if (
        window is None
        or now_ms < window[0]
        or link.frames_received < window[1]
        or link.frames_missed < window[2]
    ):
        step.state = replace(step.state, link_window=current)
        return
    elapsed_ms = now_ms - window[0]
    if elapsed_ms < config.link_window_ms:
        return
    step.state = replace(step.state, link_window=current)
    received = link.frames_received - window[1]
    missed = link.frames_missed - window[2]
    sent = received + missed
    if sent < config.link_window_min_frames or missed <= config.link_loss_max * sent:
        return
    latch(
        step,
        FaultCode.LINK_STALE,
        StopKind.CONTROLLED,
        f"Firmware link degraded: {missed} of {sent} frames from the motor controller lost in "
        f"the last {elapsed_ms} ms ({100.0 * missed / sent:.0f} %, limit "
        f"{100.0 * config.link_loss_max:.0f} %)",
    )


def link_settled(state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int) -> bool:
    """The link has been up, in the same session and fresh for ``link_settle_ms`` (SR-LINK-2)."""
    return not link_blockers(state, inputs, config, now_ms)


def link_blockers(state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int) -> list[str]:
    """The link must be up and settled before a START (SR-LINK-2)."""
    link = inputs.link
    if link is None:
        return []
    if not link.up:
        return ["the firmware link is down: check the USB cable to the motor controller"]
    since_ms = state.link_settled_since_ms
    if since_ms is None or state.link_session != link.session:
        return ["the firmware link has just been set up again: wait a moment"]
    settled_ms = now_ms - since_ms
    if settled_ms < config.link_settle_ms:
        return [
            f"the firmware link has been up for {settled_ms} ms, less than "
            f"{config.link_settle_ms} ms: wait a moment"
        ]
    return []
