"""Flood limits without a broker: the command intake and the folding of rejection events.

A flood of commands must cost little and must never hold up ``cmd/stop``: commands beyond
the intake limit are dropped on arrival, before parsing (``commands_dropped``), a stop never
is; ``command_rejected`` events beyond a burst are counted and reported in one go.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.adapters.mqtt.commands import CommandRejected, ParsedCommand
from controller.adapters.mqtt.intake import COMMAND_BURST, COMMANDS_PER_S, RejectionFolder
from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.settings import MqttSettings

PREFIX = "treadmill/t1/cmd/"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make_publisher(commands: list[ParsedCommand]) -> MqttPublisher:
    settings = MqttSettings(
        host="127.0.0.1",
        treadmill_id="t1",
        device_name="Treadmill t1",
        sw_version="test",
        max_stage=4,
        max_speed_kmh=8.0,
    )
    return MqttPublisher(settings, on_command=commands.append)


def test_folder_lets_a_burst_through_then_folds_and_reports_the_count() -> None:
    clock = FakeClock()
    folder = RejectionFolder(clock, per_s=2.0, burst=5)
    assert [folder.allow() for _ in range(5)] == [0] * 5
    assert [folder.allow() for _ in range(7)] == [None] * 7
    assert (folder.folded, folder.folded_total) == (7, 7)
    clock.now_s += 0.5  # one token back
    assert folder.allow() == 7  # the next one reported carries the count
    assert folder.allow() is None
    assert folder.take_summary() == 0  # no token yet
    clock.now_s += 0.5
    assert folder.take_summary() == 1
    assert (folder.folded, folder.folded_total) == (0, 8)


@given(
    gaps_ms=st.lists(st.integers(0, 2000), max_size=300),
    per_s=st.floats(0.5, 100.0),
    burst=st.integers(1, 50),
)
def test_folder_never_lets_more_than_burst_plus_rate_through(
    gaps_ms: list[int], per_s: float, burst: int
) -> None:
    clock = FakeClock()
    folder = RejectionFolder(clock, per_s=per_s, burst=burst)
    start_s = clock.now_s
    allowed = 0
    for gap_ms in gaps_ms:
        clock.now_s += gap_ms / 1000
        if folder.allow() is not None:
            allowed += 1
    assert allowed <= burst + (clock.now_s - start_s) * per_s + 1e-9
    assert allowed + folder.folded_total == len(gaps_ms)


def test_intake_drops_commands_beyond_the_burst_but_never_a_stop() -> None:
    publisher = make_publisher([])
    admitted = [publisher.intake.admit(f"{PREFIX}target_kmh") for _ in range(COMMAND_BURST + 100)]
    assert admitted.count(True) == COMMAND_BURST
    assert all(publisher.intake.admit(f"{PREFIX}stop") for _ in range(10_000))
    assert publisher.intake.admit("homeassistant/status")  # not a command: never limited
    assert COMMANDS_PER_S >= 10  # well above what a person or a dashboard sends


def test_rejection_events_beyond_the_burst_are_folded_into_the_next() -> None:
    commands: list[ParsedCommand] = []
    publisher = make_publisher(commands)
    for _ in range(60):
        publisher.intake.handle(f"{PREFIX}target_kmh", b"fast", retain=False)
    assert len(commands) == 60  # every rejection still reaches the service
    assert all(isinstance(c, CommandRejected) for c in commands)
    events = list(publisher.outbox.events)
    assert len(events) == 20  # the burst, one by one
    stats = publisher.stats
    assert (stats.commands_rejected, stats.rejections_folded) == (60, 40)


def test_a_stop_counts_once_whichever_path_brings_it_first() -> None:
    publisher = make_publisher([])
    assert publisher.intake.stop_is_twin(0) is False  # stop path down: every stop counts
    publisher.intake.set_stop_path(up=True)
    # stop 1 via the stop path first, stop 2 via the main connection first
    assert [publisher.intake.stop_is_twin(p) for p in (1, 0, 0, 1)] == [False, True, False, True]
    # a copy lost on one path (a queue full of stops) delays a later stop, never loses it
    assert publisher.intake.stop_is_twin(1) is False  # stop 3: its main copy is lost
    assert publisher.intake.stop_is_twin(0) is True  # stop 4 on main: taken for the twin of 3
    assert publisher.intake.stop_is_twin(1) is False  # stop 4 on the stop path: counts
