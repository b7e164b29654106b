"""The wording of the events the training program raises: pure builders of ``Event``."""

from __future__ import annotations

from collections.abc import Sequence

from controller.rules.model import Event
from controller.training.sessions import SessionRecord

EventDetails = dict[str, str | int | float | bool | None]

# ------------------------------------------------------------------ sessions


def session_started(session_id: str, client_id: str | None, stage_cap: int) -> Event:
    return Event(
        "session_started",
        f"session started (client {client_id or 'none'}, stage cap {stage_cap})",
        {"session_id": session_id, "client_id": client_id, "stage_cap": stage_cap},
    )


def session_guidance(session_id: str, remaining_s: float, stage: int) -> Event:
    return Event(
        "session_guidance",
        f"{remaining_s / 60:.0f} min left of this session at stage "
        f"{stage}: the belt will slow to a stop when it is complete",
        {"session_id": session_id, "remaining_s": remaining_s},
    )


def session_complete(session_id: str, moving_s: float, stage: int, limit_s: float | None) -> Event:
    return Event(
        "session_complete",
        f"session complete: {moving_s / 60:.1f} min moving at "
        f"stage {stage} (limit {limit_s / 60 if limit_s else 0:g} "
        "min); stopping the belt",
        {"session_id": session_id, "moving_s": moving_s},
    )


def session_finished(record: SessionRecord, *, counted: bool) -> Event:
    return Event(
        "session_finished",
        f"session finished: {record.moving_s / 60:.1f} min moving, "
        f"{record.distance_m:.0f} m, highest stage {record.highest_stage}",
        {
            "session_id": record.session_id,
            "client_id": record.client_id,
            "moving_s": round(record.moving_s, 1),
            "distance_m": round(record.distance_m, 1),
            "end_reason": None if record.end_reason is None else record.end_reason.value,
            "counted": counted,
        },
    )


def session_interrupted(record: SessionRecord) -> Event:
    return Event(
        "session_interrupted",
        f"session {record.session_id} was cut off (power loss or crash); kept "
        f"up to its last checkpoint: {record.moving_s / 60:.1f} min moving, "
        f"{record.distance_m:.0f} m",
        {
            "session_id": record.session_id,
            "client_id": record.client_id,
            "moving_s": round(record.moving_s, 1),
            "distance_m": round(record.distance_m, 1),
        },
    )


# ------------------------------------------------------------------ clients


def client_refused_bad_id(client_id: str, source: str) -> Event:
    return Event(
        "client_refused",
        f"client id {client_id[:80]!r} refused: use 1 to 64 characters of A-Z a-z 0-9 "
        "_ . - (an opaque id, never a name)",
        {"client_id": client_id, "source": source},
    )


def client_refused_disabled(client_id: str | None, source: str) -> Event:
    return Event(
        "client_refused",
        "the training program is disabled (training.enabled)",
        {"client_id": client_id, "source": source},
    )


def client_refused_moving(client_id: str | None, source: str) -> Event:
    return Event(
        "client_refused",
        f"client {client_id or 'none'} refused: assign clients with the belt at rest",
        {"client_id": client_id, "source": source},
    )


def client_assigned(
    client_id: str | None,
    source: str,
    stage_cap: int,
    unlocked_stage: int | None,
    *,
    confirmed: bool,
    changed: bool,
) -> Event:
    details: EventDetails = {
        "client_id": client_id,
        "source": source,
        "stage_cap": stage_cap,
        "confirmed": confirmed,
        "unlocked_stage": unlocked_stage,
    }
    if client_id is None:
        return Event("client_assigned", "no client assigned: stage cap 1", details)
    note = "" if changed else " (already assigned)"
    if not confirmed:
        return Event(
            "client_assigned",
            f"client {client_id} assigned from {source}{note}: stage cap 1 until a trainer "
            "confirms at the machine (trainer action)",
            details,
        )
    return Event(
        "client_assigned",
        f"client {client_id} assigned from {source}{note}: stage cap {stage_cap}",
        details,
    )


def client_cleared(client_id: str) -> Event:
    return Event(
        "client_cleared",
        f"client {client_id} cleared at the end of the session: stage cap 1",
        {"client_id": client_id},
    )


# ------------------------------------------------------------------ the trainer action


def unlock_refused_no_client(source: str) -> Event:
    return Event(
        "unlock_refused",
        "trainer action: no client is assigned; assign the client first",
        {"client_id": None, "source": source},
    )


def unlock_refused_moving(client_id: str, source: str) -> Event:
    return Event(
        "unlock_refused",
        f"trainer action for client {client_id} ignored: stop the belt first",
        {"client_id": client_id, "source": source},
    )


def client_confirmed(client_id: str, source: str, stage_cap: int) -> Event:
    return Event(
        "client_confirmed",
        f"trainer confirmed client {client_id}: stage cap {stage_cap}",
        {"client_id": client_id, "source": source, "stage_cap": stage_cap},
    )


def unlock_refused_log_unread(client_id: str, source: str, problem: str | None) -> Event:
    return Event(
        "unlock_refused",
        f"client {client_id}: the session log has not been read ({problem}); "
        "the criteria cannot be checked until it is available",
        {"client_id": client_id, "source": source},
    )


def unlock_refused_at_top(
    client_id: str, source: str, current_stage: int, criteria_json: str
) -> Event:
    return Event(
        "unlock_refused",
        f"client {client_id} is already at the highest stage ({current_stage})",
        {
            "client_id": client_id,
            "source": source,
            "current_stage": current_stage,
            "next_stage": None,
            "criteria": criteria_json,
        },
    )


def unlock_refused_unmet(  # noqa: PLR0917 -- the unlock status, all in the details
    client_id: str,
    source: str,
    current_stage: int,
    next_stage: int,
    criteria_json: str,
    unmet: Sequence[str],
) -> Event:
    return Event(
        "unlock_refused",
        f"client {client_id}: stage {next_stage} not unlocked: {'; '.join(unmet)}",
        {
            "client_id": client_id,
            "source": source,
            "current_stage": current_stage,
            "next_stage": next_stage,
            "criteria": criteria_json,
        },
    )


# ------------------------------------------------------------------ stages


def stage_unlocked(client_id: str, from_stage: int, to_stage: int, source: str) -> Event:
    return Event(
        "stage_unlocked",
        f"client {client_id}: stage {to_stage} unlocked ({source})",
        {"client_id": client_id, "from_stage": from_stage, "to_stage": to_stage, "source": source},
    )


def demoted(client_id: str, from_stage: int, to_stage: int, source: str, reason: object) -> Event:
    return Event(
        "demoted",
        f"client {client_id}: back to stage {to_stage} ({reason})",
        {"client_id": client_id, "from_stage": from_stage, "to_stage": to_stage, "source": source},
    )


def stage_cap_changed(from_stage: int, to_stage: int) -> Event:
    return Event(
        "stage_cap_changed",
        f"stage cap {from_stage} -> {to_stage}",
        {"from_stage": from_stage, "to_stage": to_stage},
    )
