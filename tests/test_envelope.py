"""The envelope and the fixed-time plan follower, on a made-up intersection."""

from __future__ import annotations

import pytest

from citybrain.control.envelope import EnvelopeTiming, SafetyEnvelope, plan_position
from citybrain.control.model import (
    Intersection,
    PlanStep,
    SignalLink,
    phases_from_plan,
    transitions_from_plan,
)

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
