"""The envelope and the fixed-time plan follower, on a made-up intersection."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from citybrain.control.envelope import EnvelopeTiming, Hold, SafetyEnvelope, plan_position
from citybrain.control.model import (
    Intersection,
    Phase,
    PlanStep,
    SignalLink,
    phases_from_plan,
    transitions_from_plan,
)
from citybrain.errors import ConfigError

PLAN = (
    PlanStep("GGrr", 30),
    PlanStep("yyrr", 3),
    PlanStep("rrrr", 2),
    PlanStep("rrGG", 20),
    PlanStep("rryy", 3),
)


def crossing(offset: float = 0.0, plan: tuple[PlanStep, ...] = PLAN) -> Intersection:
    phases = phases_from_plan(plan)
    links = tuple(SignalLink(i, f"in{i}", f"out{i}") for i in range(4))
    foes = (frozenset({2, 3}), frozenset({2, 3}), frozenset({0, 1}), frozenset({0, 1}))
    return Intersection(
        id="x",
        links=links,
        conflicts=foes,
        yields_to=(frozenset(),) * 4,
        plan=plan,
        plan_offset_s=offset,
        phases=phases,
        yellow_s=3,
        all_red_s=2,
        transitions=transitions_from_plan(plan, phases),
    )


def test_plan_position_is_aligned_to_absolute_time() -> None:
    x = crossing()
    assert x.cycle_s == 58
    assert plan_position(x, 0) == (0, 0)
    assert plan_position(x, 31) == (1, 1)
    assert plan_position(x, 58 * 100 + 34) == (2, 1)
    assert plan_position(crossing(offset=10), 10) == (0, 0)


def test_change_goes_through_yellow_and_all_red_in_order() -> None:
    env = SafetyEnvelope(crossing(), EnvelopeTiming(min_green_s=5), start_s=0)
    shown = [env.step(t, 1 if t >= 10 else 0) for t in range(0, 20)]
    assert shown[:10] == ["GGrr"] * 10
    assert shown[10:13] == ["yyrr"] * 3
    assert shown[13:15] == ["rrrr"] * 2
    assert shown[15:] == ["rrGG"] * 5


def test_minimum_green_holds_against_an_early_request() -> None:
    env = SafetyEnvelope(crossing(), EnvelopeTiming(min_green_s=5), start_s=0)
    shown = [env.step(t, 0 if t < 3 else 1) for t in range(0, 8)]
    assert shown == ["GGrr"] * 5 + ["yyrr"] * 3  # asked at 3, changed at 5 (min green)
    # once begun, a change runs to its end even if the request flips back
    shown = [env.step(t, 0) for t in range(8, 16)]
    assert shown == ["rrrr"] * 2 + ["rrGG"] * 5 + ["rryy"]  # 5 s green, then back


def test_plan_shorter_than_minimum_keeps_its_own_green() -> None:
    plan = (PlanStep("GGrr", 3), PlanStep("yyrr", 3), PlanStep("rrGG", 20), PlanStep("rryy", 3))
    env = SafetyEnvelope(crossing(plan=plan), EnvelopeTiming(min_green_s=5), start_s=0)
    assert [env.step(t, 1) for t in range(0, 4)] == ["GGrr", "GGrr", "GGrr", "yyrr"]


def test_starts_inside_the_plan_change_interval() -> None:
    env = SafetyEnvelope(crossing(), EnvelopeTiming(), start_s=31)
    assert env.in_clearance and env.phase == 1
    assert [env.step(t, 1) for t in range(31, 36)] == ["yyrr", "yyrr", "rrrr", "rrrr", "rrGG"]


def test_unknown_phase_is_refused() -> None:
    env = SafetyEnvelope(crossing(), EnvelopeTiming(), start_s=0)
    with pytest.raises(ValueError, match="no phase 7"):
        env.step(0, 7)


def test_minimum_green_can_be_set_per_phase() -> None:
    timing = EnvelopeTiming(min_green_s=5, min_green_by_phase=(("x", 0, 8.0), ("other", 0, 1.0)))
    env = SafetyEnvelope(crossing(), timing, start_s=0)
    assert env.rules.min_green_s == (8.0, 5.0)
    assert [env.step(t, 1) for t in range(0, 9)] == ["GGrr"] * 8 + ["yyrr"]


def test_maximum_green_ends_a_green_in_plan_order() -> None:
    env = SafetyEnvelope(crossing(), EnvelopeTiming(max_green_s=40), start_s=0)
    assert env.rules.max_green_s == (40.0, 40.0)
    shown = [env.step(t, 0) for t in range(0, 46)]
    assert shown[39] == "GGrr" and shown[40:43] == ["yyrr"] * 3 and shown[45] == "rrGG"
    assert env.phase == 1 and not env.holds


def test_maximum_green_is_never_below_the_plans_own_green() -> None:
    env = SafetyEnvelope(crossing(), EnvelopeTiming(min_green_s=5, max_green_s=10), start_s=0)
    assert env.rules.max_green_s == (30.0, 20.0)


def test_a_hold_keeps_the_green_beyond_its_maximum_and_is_recorded() -> None:
    env = SafetyEnvelope(crossing(), EnvelopeTiming(max_green_s=40), start_s=0)
    shown = [env.step(t, 0, hold=t < 50) for t in range(0, 51)]
    assert shown[:50] == ["GGrr"] * 50 and shown[50] == "yyrr"
    assert env.holds == [Hold(0, 40, 50)] and env.holds[0].duration_s == 10
    # a request for another phase ends a held green at once
    env = SafetyEnvelope(crossing(), EnvelopeTiming(max_green_s=40), start_s=0)
    shown = [env.step(t, 0 if t < 45 else 1, hold=True) for t in range(0, 46)]
    assert shown[44:] == ["GGrr", "yyrr"] and env.holds == [Hold(0, 40, 45)]


def test_a_plan_change_without_yellow_is_replaced_by_yellow_and_all_red() -> None:
    plan = (PlanStep("GGrr", 30), PlanStep("rrrr", 2), PlanStep("rrGG", 20), PlanStep("rryy", 3))
    env = SafetyEnvelope(crossing(plan=plan), EnvelopeTiming(), start_s=0)
    assert env.rules.replaced == ((0, 1),)
    assert env.rules.intervals[(0, 1)] == (PlanStep("yyrr", 3), PlanStep("rrrr", 2))
    assert env.rules.intervals[(1, 0)] == (PlanStep("rryy", 3),)


def test_conflicts_the_plan_shows_are_approved_others_refused() -> None:
    plan = (PlanStep("GGGr", 30), PlanStep("yyyr", 3), PlanStep("rrrG", 20), PlanStep("rrry", 3))
    x = crossing(plan=plan)  # 2 crosses 0 and 1; the plan shows them together
    assert x.plan_approved_pairs == {(0, 2), (1, 2)}
    assert x.unapproved_pairs("GGGr") == [] and x.unapproved_pairs("rGrG") == [(1, 3)]
    SafetyEnvelope(x, EnvelopeTiming(), start_s=0)
    bad = dataclasses.replace(x, phases=(*x.phases, Phase(2, "GrrG", 0.0)))
    with pytest.raises(ValueError, match=r"phase 2 shows conflicting greens \[\(0, 3\)\]"):
        SafetyEnvelope(bad, EnvelopeTiming(), start_s=0)
    sneaky = dataclasses.replace(x, transitions={(0, 1): (PlanStep("GyyG", 3),)})
    with pytest.raises(ValueError, match="the change from phase 0 to 1"):
        SafetyEnvelope(sneaky, EnvelopeTiming(), start_s=0)


def test_a_change_that_needs_a_yellow_time_is_refused_without_one() -> None:
    plan = (PlanStep("GGrr", 30), PlanStep("rrGG", 20))  # no change intervals at all
    x = dataclasses.replace(crossing(plan=plan), yellow_s=0)
    with pytest.raises(ValueError, match="needs a yellow time"):
        SafetyEnvelope(x, EnvelopeTiming(), start_s=0)


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"min_green_s": -1.0}, "envelope.min_green_s must not be negative"),
        ({"max_green_s": 0.0}, "envelope.max_green_s must be positive"),
        ({"min_green_by_phase": (("x", 0, -2.0),)}, "x phase 0 must not be negative"),
    ],
)
def test_bad_timing_is_refused(timing: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EnvelopeTiming(**timing)
