"""Every scenario in scenarios/ runs on the real service and simulator, and must hold.

The whole library is run once per test session, several scenarios at a time in one event
loop (each with its own service, simulator and mock pins), then each file is one test.
``TREADMILL_SCENARIO_JOBS`` sets how many run at once. Measured on a 2-core machine for the
28 files: 1 at a time 206 s; 6: 38 s; 10: 24 s, p99 loop lateness still below 6 ms; all 28 at
once: 13 s, but p99 lateness 23 ms, more than the 20 ms control period. Default 8.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest

from controller.tools.scenario import ScenarioRunError, run_scenarios
from controller.tools.scenario_results import ScenarioResult, format_report
from controller.tools.scenario_spec import load_scenario, load_scenario_config
from controller.tools.virtual_time import run_virtual
from firmware_bridge.port.bridge import FirmwareBridge
from firmware_bridge.wire.session_actions import JITTER_RANGE, backoff_s

REPO = Path(__file__).resolve().parents[2]
SCENARIO_DIR = REPO / "scenarios"
SAFETY_DOC = REPO / "docs" / "safety.md"
FILES = sorted(SCENARIO_DIR.glob("*.yaml"))
JOBS = int(os.environ.get("TREADMILL_SCENARIO_JOBS", "8"))

RULE_LINE = re.compile(r"^#\s*Rules:\s*(.+)$", re.MULTILINE)
RULE_ID = re.compile(r"\b(?:SR|FW|GPIO)-[A-Z]*-?\d+\b")

#: Rules of docs/safety.md that a scenario on the simulator cannot show, and where they are
#: proven instead.
NOT_SHOWN_BY_SCENARIOS: dict[str, str] = {
    "SR-PREC-1": "check order inside one tick: tests/core",
    "SR-TIMER-1": "timer deadlines: tests/core/test_deadline.py and tests/service",
    "SR-SPEED-3": "a paused loop never jumps the ramp: needs a frozen clock, tests/core",
    "SR-FAULT-2": "fault upgrade rules: tests/core",
    "SR-FAULT-3": "secondary faults: tests/core",
    "SR-LOG-1": "log levels of clean and expected paths: tests/service and tests/sim",
    "SR-STOP-5": "the verdicts the service, training and telemetry read: tests/core, training",
    "SR-MODE-3": "a mode change missing from the table is unreachable by design: tests/core",
    "SR-PLAUS-3": "belt moving at rest: the simulator cannot move an unpowered belt, tests/core",
    "SR-PLAUS-4": "invalid speed reading: not producible over the wire codec, tests/core",
    "SR-GRIP-3": "grip loss action slow: no stage of the shipped configs uses it, tests/core",
    "SR-GRIP-4": "grip loss action warn needs hands_required > 0: not in the shipped configs",
    "SR-GRIP-7": "stuck grip sensor needs 30 min of running: tests/core",
    "SR-GRIP-8": "stage change during a grip loss: tests/core",
    "SR-FW-3": "config checksum mismatch: the simulator always echoes the checksum, tests/core",
    "SR-EVENT-1": "event wording: tests/core/event_catalogue.txt",
    "SR-CHAN-1": "missing or invalid Pi sensor reading: not producible by the adapter, tests/core",
    "SR-CHAN-4": "rest needs both channels: tests/core (and every scenario that stops to idle)",
    "SR-MON-4": "sensor checks in key-relay mode: tests/core/test_key_relay.py",
    "SR-MON-5": "no speed commands in key-relay mode: tests/core/test_key_relay.py",
    "SR-RELOAD-1": "the field-by-field merge of a reload: tests/core/test_reload_merge.py",
    **{f"SR-CONFIG-{n}": "configuration checks: tests/config" for n in range(1, 11)},
}

#: Scenarios that currently fail because of a known defect outside the scenario runner.
#: ``strict``: when the defect is fixed the test reports XPASS and the entry must go.
KNOWN_DEFECTS: dict[str, str] = {}


#: Scenarios also run in real time over the pseudo-terminal, as end-to-end checks of the
#: virtual-clock runs: a grip stop, a link loss the firmware's lease ends, an e-stop.
REAL_TIME: tuple[str, ...] = (
    "grip_loss_stage1_stops_and_latches",
    "link_loss_firmware_lease_stops_belt",
    "estop_stops_belt_reset_needs_release",
)


def _run(paths: list[Path], *, virtual: bool) -> dict[str, ScenarioResult | ScenarioRunError]:
    scenarios = [load_scenario(path) for path in paths]
    items = [(scenario, load_scenario_config(scenario)) for scenario in scenarios]
    batch = run_scenarios(items, jobs=JOBS)
    results = run_virtual(batch) if virtual else asyncio.run(batch)
    return {path.stem: result for path, result in zip(paths, results, strict=True)}


@pytest.fixture(scope="module")
def library_results() -> dict[str, ScenarioResult | ScenarioRunError]:
    """Run the whole library once on a virtual clock, ``JOBS`` scenarios at a time."""
    return _run(FILES, virtual=True)


@pytest.fixture(scope="module")
def real_time_results() -> dict[str, ScenarioResult | ScenarioRunError]:
    """The :data:`REAL_TIME` scenarios, in real time."""
    return _run([SCENARIO_DIR / f"{name}.yaml" for name in REAL_TIME], virtual=False)


def test_library_is_not_empty() -> None:
    assert len(FILES) >= 20, f"expected the scenario library in {SCENARIO_DIR}"


def _params() -> list[object]:
    params: list[object] = []
    for path in FILES:
        marks = []
        if path.stem in KNOWN_DEFECTS:
            marks.append(pytest.mark.xfail(reason=KNOWN_DEFECTS[path.stem], strict=True))
        params.append(pytest.param(path.stem, id=path.stem, marks=marks))
    return params


@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_scenario_holds(
    name: str, library_results: dict[str, ScenarioResult | ScenarioRunError]
) -> None:
    result = library_results[name]
    if isinstance(result, ScenarioRunError):
        pytest.fail(f"{name}: could not run: {result}")
    assert result.passed, format_report(result)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_TIME)
def test_scenario_holds_in_real_time(
    name: str,
    real_time_results: dict[str, ScenarioResult | ScenarioRunError],
    library_results: dict[str, ScenarioResult | ScenarioRunError],
) -> None:
    """The end-to-end check of the virtual clock: the same verdicts, and the same stop."""
    result = real_time_results[name]
    if isinstance(result, ScenarioRunError):
        pytest.fail(f"{name}: could not run: {result}")
    assert result.passed, format_report(result)
    virtual = library_results[name]
    assert not isinstance(virtual, ScenarioRunError)
    assert [e.passed for e in virtual.expectations] == [e.passed for e in result.expectations]
    assert [s.cause for s in virtual.stops] == [s.cause for s in result.stops]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_names_its_rules(path: Path) -> None:
    """Every file starts with a ``# Rules: ...`` line naming rule ids."""
    text = path.read_text(encoding="utf-8")
    match = RULE_LINE.search(text.split("\n\n", 1)[0])
    assert match is not None, f"{path.name}: the first comment must be '# Rules: SR-...'"
    assert RULE_ID.findall(match.group(1)), f"{path.name}: no rule id in {match.group(0)!r}"


def _covered_rules() -> set[str]:
    covered: set[str] = set()
    for path in FILES:
        for line in RULE_LINE.findall(path.read_text(encoding="utf-8")):
            covered.update(RULE_ID.findall(line))
    return covered


def test_every_safety_rule_is_shown_or_accounted_for() -> None:
    """Each SR-... rule of docs/safety.md is named by a scenario or listed above with where
    it is proven instead."""
    assert SAFETY_DOC.exists(), "docs/safety.md (the rule list) is missing"
    documented = set(re.findall(r"\bSR-[A-Z]+-\d+\b", SAFETY_DOC.read_text(encoding="utf-8")))
    assert documented, "no SR-... rule ids found in docs/safety.md"
    missing = documented - _covered_rules() - set(NOT_SHOWN_BY_SCENARIOS)
    assert not missing, f"rules with no scenario and no reason: {sorted(missing)}"


def test_scenarios_name_only_documented_rules() -> None:
    assert SAFETY_DOC.exists(), "docs/safety.md (the rule list) is missing"
    documented = set(RULE_ID.findall(SAFETY_DOC.read_text(encoding="utf-8")))
    firmware_doc = REPO / "docs" / "firmware-safety.md"
    if firmware_doc.exists():
        documented |= set(RULE_ID.findall(firmware_doc.read_text(encoding="utf-8")))
    unknown = {rule for rule in _covered_rules() if rule.startswith("SR-")} - documented
    assert not unknown, f"scenarios name rules that docs/safety.md does not have: {sorted(unknown)}"


def test_docs_list_every_scenario() -> None:
    doc = (REPO / "docs" / "scenarios.md").read_text(encoding="utf-8")
    missing = [path.name for path in FILES if f"(../scenarios/{path.name})" not in doc]
    assert not missing, f"docs/scenarios.md does not list: {missing}"


def _latest_reopen_s(outage_s: float, min_s: float, max_s: float) -> float:
    """The latest the bridge can try to open the port again after a cable that was out for
    ``outage_s`` is back, over every jitter the back-off can draw (``backoff_s``): the try
    that straddles the replug comes at most one (largest) back-off after the last try before
    it, and that last try can come just before the replug."""
    low, high = JITTER_RANGE
    earliest_s = latest_s = 0.0  # the k-th try after the link loss, with the least/most jitter
    worst_s = 0.0
    for failures in range(1, 64):
        if earliest_s >= outage_s:
            break  # even the least jitter has a try at or after the replug: later ones wait
        largest_s = backoff_s(failures, min_s, max_s, high)
        worst_s = max(worst_s, min(latest_s, outage_s) + largest_s - outage_s)
        earliest_s += backoff_s(failures, min_s, max_s, low)
        latest_s += largest_s
    return worst_s


#: Time allowed on top of the latest reopen for the open, the handshake and a loaded host.
REOPEN_ALLOWANCE_S = 0.3


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_a_link_restored_window_covers_the_slowest_designed_reconnect(path: Path) -> None:
    """A scenario that replugs the cable and expects ``link_restored`` must wait for the
    bridge's slowest reconnect by design, not for a lucky draw of its jitter."""
    spec = load_scenario(path).spec
    unplugged_s = [s.at_s for s in spec.steps if s.sim_fault == "disconnect"]
    replugged_s = [s.at_s for s in spec.steps if s.sim_clear == "disconnect"]
    defaults = inspect.signature(FirmwareBridge.__init__).parameters
    min_s = float(defaults["reconnect_min_s"].default)
    max_s = float(defaults["reconnect_max_s"].default)
    for expect in spec.expect:
        if expect.event != "link_restored" or expect.to_s is None:
            continue
        replug_s = max(t for t in replugged_s if expect.from_s is None or t <= expect.from_s)
        unplug_s = max(t for t in unplugged_s if t < replug_s)
        needed_s = replug_s + _latest_reopen_s(replug_s - unplug_s, min_s, max_s)
        assert expect.to_s >= needed_s + REOPEN_ALLOWANCE_S, (
            f"{path.name}: link_restored awaited until {expect.to_s} s, but after the "
            f"{replug_s - unplug_s:.2f} s unplug the bridge may first try to reopen at "
            f"{needed_s:.2f} s; wait until at least {needed_s + REOPEN_ALLOWANCE_S:.2f} s"
        )


def test_latest_reopen_matches_the_back_off_by_hand() -> None:
    """The 1.5 s unplug of link_loss_firmware_lease_stops_belt: tries 0.15-0.25, 0.45-0.75,
    1.05-1.75 s after the loss; the 4th (1.2-2.0 s later) can follow a 3rd just before 1.5 s."""
    assert _latest_reopen_s(1.5, 0.2, 5.0) == pytest.approx(2.0)
    assert _latest_reopen_s(0.025, 0.2, 5.0) == pytest.approx(0.25 - 0.025)
    assert _latest_reopen_s(0.9, 0.2, 5.0) == pytest.approx(0.75 + 1.0 - 0.9)


@pytest.mark.slow
def test_the_link_comes_back_at_the_same_time_in_every_run_with_a_seed(
    library_results: dict[str, ScenarioResult | ScenarioRunError],
) -> None:
    """Run again on the virtual clock, a scenario that unplugs the cable sees the link come
    back at the same moment: the link's reconnect jitter follows the scenario's seed."""
    name = "link_loss_firmware_lease_stops_belt"
    again = _run([SCENARIO_DIR / f"{name}.yaml"], virtual=True)[name]
    first = library_results[name]
    assert not isinstance(first, ScenarioRunError)
    assert not isinstance(again, ScenarioRunError)

    def restored(result: ScenarioResult) -> str:
        (observed,) = [e.observed for e in result.expectations if "link_restored" in e.text]
        return observed

    assert restored(again) == restored(first)
    assert restored(first).startswith("at ")


#: Seeds with which, when a stop went out only every 250 ms, no STOP got through 80 % frame
#: loss while the loss lasted (the belt ran on to 3.4 s after the loss began; 57 of seeds
#: 0-499 failed the scenario then, none now).
HEAVY_LOSS_SEEDS = (12, 24, 37, 41, 50)


@pytest.mark.slow
def test_SR_STOP_6_a_stop_gets_through_heavy_frame_loss_with_any_seed() -> None:
    """A STOP sent every tick while the firmware still reports RUNNING reaches it through
    80 % frame loss (on a firmware ignoring its lease) for seeds that defeated a STOP sent
    every 250 ms."""
    base = load_scenario(SCENARIO_DIR / "link_heavy_frame_loss_latches.yaml")
    items = []
    for seed in HEAVY_LOSS_SEEDS:
        scenario = dataclasses.replace(base, spec=base.spec.model_copy(update={"seed": seed}))
        items.append((scenario, load_scenario_config(scenario)))
    results = run_virtual(run_scenarios(items, jobs=JOBS))
    for seed, result in zip(HEAVY_LOSS_SEEDS, results, strict=True):
        assert not isinstance(result, ScenarioRunError), (seed, result)
        assert result.passed, f"seed {seed}:\n{format_report(result)}"
