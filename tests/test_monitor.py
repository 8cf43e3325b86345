"""The signal monitor: hand-made lamp sequences with each violation, and clean envelope runs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.control.envelope import (
    EnvelopeTiming,
    SafetyEnvelope,
    next_green_phase,
    plan_position,
)
from citybrain.control.model import Intersection, PlanStep
from citybrain.errors import ScenarioError
from citybrain.sim import backend as sb
from citybrain.sim.monitor import SignalMonitor, Violation
from citybrain.sim.runner import prepare, sumo_args

from .test_envelope import PLAN, crossing
from .test_envelope_props import intersections, request_lists, timings

Runs = list[tuple[str, int]]
"""(state shown, for how many 1-s steps)."""


def watch(
    runs: Runs,
    x: Intersection | None = None,
    timing: EnvelopeTiming | None = None,
    hold: bool = False,
) -> list[Violation]:
    x = x or crossing()
    monitor = SignalMonitor([x], timing or EnvelopeTiming())
    t = 0
    for state, seconds in runs:
        for _ in range(seconds):
            monitor.observe(t, x.id, state, hold=hold)
            t += 1
    return monitor.violations


def rules(violations: list[Violation]) -> list[tuple[float, str]]:
    return [(v.time_s, v.rule) for v in violations]


def test_the_stored_plan_is_clean() -> None:
    plan: Runs = [(s.state, int(s.duration_s)) for s in PLAN] * 5
    assert watch(plan) == []
    assert watch(plan[3:]) == []  # starting mid-cycle, runs under way are not judged


def test_conflicting_greens_are_caught_once_per_appearance() -> None:
    runs: Runs = [("GGrr", 10), ("yyrr", 3), ("GrGr", 5), ("yryr", 3), ("rrGG", 10)]
    v, w = [v for v in watch(runs) if v.rule == "conflict"]
    assert (v.time_s, v.signal, v.rule) == (13, "x", "conflict")
    assert "[(0, 2)]" in v.detail and "'GrGr'" in v.detail
    assert w.time_s == 18 and "'yryr'" in w.detail  # both clearing at once: still both going


def test_a_yellow_beside_a_conflicting_green_is_a_conflict() -> None:
    """A link still on yellow is still going: the cross street may not get green beside it
    (what a cabinet's compatibility matrix forbids), though no two greens conflict."""
    (v,) = [v for v in watch([("GGrr", 10), ("yyGG", 3)]) if v.rule == "conflict"]
    assert v.time_s == 10 and "'yyGG'" in v.detail


@pytest.mark.parametrize("letter", ["O", "o", "s"])
def test_sumo_letters_that_let_traffic_go_are_judged_as_going(letter: str) -> None:
    runs: Runs = [("GGrr", 10), ("yyrr", 3), ("rrrr", 2), (f"rr{letter}G", 5), (f"GG{letter}r", 5)]
    found = [v for v in watch(runs) if v.rule == "conflict"]
    assert [v.time_s for v in found] == [20] and f"'GG{letter}r'" in found[0].detail


def test_a_conflict_the_plan_shows_is_approved() -> None:
    plan = (PlanStep("GGGr", 30), PlanStep("yyyr", 3), PlanStep("rrrG", 20), PlanStep("rrry", 3))
    x = crossing(plan=plan)
    assert watch([(s.state, int(s.duration_s)) for s in plan] * 2, x) == []


def test_green_straight_to_red_is_caught() -> None:
    runs: Runs = [("GGrr", 10), ("rrrr", 2), ("rrGG", 10)]
    assert rules(watch(runs)) == [(10, "green_to_red")] * 2
    # green to green is no change of right-of-way; yellow to red is the rule
    assert watch([("GGrr", 10), ("Ggrr", 10), ("yyrr", 3), ("rrrr", 1)]) == []


def test_short_yellow_is_caught() -> None:
    runs: Runs = [("GGrr", 10), ("yyrr", 2), ("rrrr", 2), ("rrGG", 10)]
    assert rules(watch(runs)) == [(12, "short_yellow")] * 2


def test_short_all_red_is_caught_per_pair_of_links() -> None:
    # the plan clears links 0 and 1 for 2 s before 2 and 3 get green, but goes from 2 and 3
    # straight back to 0 and 1: only the first order of the pair needs an all-red
    runs: Runs = [("GGrr", 10), ("yyrr", 3), ("rrrr", 1), ("rrGG", 10), ("rryy", 3), ("GGrr", 5)]
    found = watch(runs)
    assert rules(found) == [(14, "short_all_red")] * 4
    assert "link 2 green 1 s after conflicting link 0 went red, min 2 s" in found[0].detail
    assert watch([(s, d + 1 if s == "rrrr" else d) for s, d in runs]) == []


def test_short_green_is_caught() -> None:
    runs: Runs = [("GGrr", 10), ("yyrr", 3), ("rrrr", 2), ("rrGG", 3), ("rryy", 3)]
    assert rules(watch(runs)) == [(18, "short_green")] * 2
    per_phase = EnvelopeTiming(min_green_by_phase=(("x", 1, 2.0),))
    assert watch(runs, timing=per_phase) == []


def test_long_green_is_caught_unless_held() -> None:
    runs: Runs = [("GGrr", 130), ("yyrr", 3)]
    assert rules(watch(runs)) == [(120, "long_green")]  # once per green, at its maximum
    assert watch(runs, hold=True) == []
    assert rules(watch(runs, timing=EnvelopeTiming(max_green_s=60))) == [(60, "long_green")]
    x = crossing()
    monitor = SignalMonitor([x], EnvelopeTiming())
    for t in range(130):  # a hold that lapses for one step inside the excess
        monitor.observe(t, "x", "GGrr", hold=t != 125)
    assert rules(monitor.violations) == [(125, "long_green")]


def test_raise_if_any_fails_the_run_with_one_line() -> None:
    monitor = SignalMonitor([crossing()], EnvelopeTiming())
    monitor.raise_if_any()
    for t, state in enumerate(["GGrr"] * 10 + ["rrrr", "GrGr"]):
        monitor.observe(t, "x", state)
    with pytest.raises(ScenarioError) as info:
        monitor.raise_if_any()
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(
        "signal monitor: 5 violation(s) (conflict x1, green_to_red x2, short_all_red x2)"
    )
    assert "first at 10 s on x: green_to_red: link 0 G->r" in text


def test_a_state_of_the_wrong_length_is_an_error() -> None:
    monitor = SignalMonitor([crossing()], EnvelopeTiming())
    with pytest.raises(ValueError, match="wrong length"):
        monitor.observe(0, "x", "GGr")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_envelope_output_is_always_clean(data: st.DataObject) -> None:
    x = data.draw(intersections())
    timing = data.draw(timings(x))
    t = data.draw(st.integers(0, 400))
    env = SafetyEnvelope(x, timing, t)
    monitor = SignalMonitor([x], timing)
    for request, hold, steps in data.draw(request_lists(len(x.phases))):
        for _ in range(steps):
            monitor.observe(t, x.id, env.step(t, request, hold=hold), hold=hold)
            t += 1
    assert monitor.violations == []


@pytest.mark.sumo
def test_the_monitor_on_what_sumo_showed(single_cfg: Path, tmp_path: Path) -> None:
    """The run-loop hook: after each step, SUMO reports the state it showed during the step.

    First SUMO's own program, untouched (the plan follower's output must be what SUMO shows);
    then random requests, written to SUMO."""
    scenario, _, layout = prepare(single_cfg)
    xs = layout.intersections
    timing = EnvelopeTiming(max_green_s=40)
    envelopes = {x.id: SafetyEnvelope(x, timing, scenario.begin_s) for x in xs}
    monitor = SignalMonitor(xs, timing)
    rng = random.Random(3)
    asked = {x.id: 0 for x in xs}
    backend = sb.open_backend("libsumo")
    backend.start(sumo_args(scenario, 1, tmp_path, [], scenario.begin_s + 600))
    try:
        backend.subscribe([], [], [x.id for x in xs])
        t = backend.time()
        while t < scenario.begin_s + 600:
            wanted = {}
            for x in xs:
                if t < scenario.begin_s + 300:
                    request = next_green_phase(x, plan_position(x, t)[0])
                    wanted[x.id] = envelopes[x.id].step(t, request)
                else:
                    if rng.random() < 0.1:
                        asked[x.id] = rng.randrange(len(x.phases))
                    wanted[x.id] = envelopes[x.id].step(t, asked[x.id])
                    backend.set_signal_state(x.id, wanted[x.id])
            backend.step()
            states = backend.signal_states()
            for x in xs:
                shown = states[x.id][sb.TL_RED_YELLOW_GREEN_STATE]
                assert shown == wanted[x.id], t
                monitor.observe(t, x.id, shown)
            t = backend.time()
    finally:
        backend.close()
    monitor.raise_if_any()
