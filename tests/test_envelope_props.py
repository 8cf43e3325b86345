"""Property tests: the safety envelope under arbitrary intersections and request sequences.

A reference checker, written from the rules and not from the envelope's code, follows every
output step and asserts every invariant on it.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from functools import cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from citybrain.control.envelope import (
    EnvelopeTiming,
    SafetyEnvelope,
    next_green_phase,
    plan_position,
)
from citybrain.control.model import (
    GREEN,
    YELLOW,
    Intersection,
    Phase,
    PlanStep,
    SignalLink,
    phases_from_plan,
    transitions_from_plan,
)
from citybrain.netmodel.net import intersections_from_net, read_net
from citybrain.sim.scenario import load_scenario

from .conftest import RESCO_MAPS, resco_config

Requests = list[tuple[int | None, bool, int]]
"""(phase asked for or None, hold declared, for how many 1-s steps)."""
INF = float("inf")


# --- the reference rules ----------------------------------------------------------------------


def ref_min_green(x: Intersection, timing: EnvelopeTiming, p: int) -> float:
    plan = [s.duration_s for s in x.plan if s.state == x.phases[p].state]
    return min([timing.min_green_for(x.id, p), *plan])


def ref_max_green(x: Intersection, timing: EnvelopeTiming, p: int) -> float:
    if len(x.phases) == 1:
        return INF
    longest, run = 0.0, 0.0
    for k, step in enumerate(x.plan * 2):  # twice round: runs across the cycle's end
        same = k > 0 and (x.plan * 2)[k - 1].state == step.state
        run = run + step.duration_s if same else step.duration_s
        if step.state == x.phases[p].state:
            longest = max(longest, min(run, x.cycle_s))
    return max(timing.max_green_s, longest, ref_min_green(x, timing, p))


def ref_next_phase(x: Intersection, p: int) -> int:
    states = [s.state for s in x.plan]
    mine = x.phases[p].state
    if mine not in states:
        return (p + 1) % len(x.phases)
    k = states.index(mine)
    for j in range(1, len(states)):
        q = x.phase_of_state(states[(k + j) % len(states)])
        if q is not None and q != p:
            return q
    return p


def skips_yellow(states: list[str]) -> bool:
    return any(
        a in GREEN and b not in GREEN and b not in YELLOW
        for before, after in itertools.pairwise(states)
        for a, b in zip(before, after, strict=True)
    )


def merged(steps: list[tuple[str, float]]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for state, d in steps:
        if d <= 0:
            continue
        if out and out[-1][0] == state:
            out[-1] = (state, out[-1][1] + d)
        else:
            out.append((state, d))
    return out


def ref_interval(x: Intersection, a: int, b: int) -> list[tuple[str, float]]:
    """What a change from ``a`` to ``b`` must show: the plan's or net's interval, unless it
    skips a yellow; then yellow and all-red. Steps already showing ``b`` belong to ``b``."""
    src, dst = x.phases[a].state, x.phases[b].state
    steps = merged([(s.state, s.duration_s) for s in x.change_interval(a, b)])
    if skips_yellow([src, *(s for s, _ in steps), dst]):
        steps = merged([(s.state, s.duration_s) for s in x.generated_interval(a, b)])
    while steps and steps[-1][0] == dst:
        steps.pop()
    return steps


# --- the checker ----------------------------------------------------------------------------


@dataclass
class Checker:
    """Follows the lamps step by step and asserts every invariant (1-s steps)."""

    x: Intersection
    timing: EnvelopeTiming
    start_s: int
    mode: str = "green"
    phase: int = 0
    since: float = 0.0
    expected: list[tuple[str, float]] = field(default_factory=list)
    index: int = 0
    step_start: float = 0.0
    prev: str = ""
    held_steps: int = 0
    allowed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        x = self.x
        n = len(x.phases)
        self.min_green = [ref_min_green(x, self.timing, p) for p in range(n)]
        self.max_green = [ref_max_green(x, self.timing, p) for p in range(n)]
        self.intervals = {
            (a, b): ref_interval(x, a, b) for a in range(n) for b in range(n) if a != b
        }
        self.allowed = {p.state for p in x.phases} | {s.state for s in x.plan}
        self.allowed |= {s for steps in self.intervals.values() for s, _ in steps}
        k, elapsed = plan_position(x, self.start_s)
        here = x.phase_of_state(x.plan[k].state)
        if here is not None:
            self.phase, self.since = here, self.start_s - elapsed
            return
        rest: list[tuple[str, float]] = [(x.plan[k].state, x.plan[k].duration_s - elapsed)]
        j = (k + 1) % len(x.plan)
        while x.phase_of_state(x.plan[j].state) is None:
            rest.append((x.plan[j].state, x.plan[j].duration_s))
            j = (j + 1) % len(x.plan)
        self._change(next_green_phase(x, k), merged(rest), self.start_s)

    def _change(self, dst: int, steps: list[tuple[str, float]], t: float) -> None:
        self.phase = dst
        if steps:
            self.mode, self.expected, self.index, self.step_start = "change", steps, 0, t
        else:
            self.mode, self.since = "green", t

    def see(self, t: int, request: int | None, hold: bool, shown: str, target: int) -> None:
        x = self.x
        assert not x.unapproved_pairs(shown), f"{t}: conflicting greens in {shown}"
        assert shown in self.allowed, f"{t}: {shown} is neither a phase nor an interval step"
        if self.prev:
            assert not skips_yellow([self.prev, shown]), f"{t}: {self.prev} -> {shown}"
        self.prev = shown
        if self.mode == "green":
            self._green(t, request, hold, shown, target)
        else:
            self._in_change(t, shown, target)

    def _green(self, t: int, request: int | None, hold: bool, shown: str, target: int) -> None:
        p, green_s = self.phase, t - self.since
        asks_other = request is not None and request != p
        if shown == self.x.phases[p].state and target == p:
            assert not (asks_other and green_s >= self.min_green[p]), f"{t}: request ignored"
            if green_s >= self.max_green[p]:
                assert hold, f"{t}: phase {p} green {green_s} s > max, no hold"
                self.held_steps += 1
            return
        assert green_s >= self.min_green[p], f"{t}: phase {p} ended after {green_s} s"
        if request is not None and asks_other:
            assert target == request, f"{t}: changing to {target}, asked for {request}"
        else:
            assert green_s >= self.max_green[p] and not hold, f"{t}: change nobody asked for"
            assert target == ref_next_phase(self.x, p), f"{t}: max green led to {target}"
        steps = self.intervals[(p, target)]
        first = steps[0][0] if steps else self.x.phases[target].state
        assert shown == first, f"{t}: change {p}->{target} began with {shown}, not {first}"
        self._change(target, steps, t)

    def _in_change(self, t: int, shown: str, target: int) -> None:
        assert target == self.phase, f"{t}: target moved during a change"
        state, duration = self.expected[self.index]
        if t - self.step_start < duration:
            assert shown == state, f"{t}: {state} cut short by {shown}"
            return
        assert t - self.step_start == duration, f"{t}: {state} shown too long"
        self.index += 1
        if self.index < len(self.expected):
            assert shown == self.expected[self.index][0], f"{t}: interval step skipped"
            self.step_start = t
        else:
            assert shown == self.x.phases[self.phase].state, f"{t}: target not green after change"
            self.mode, self.since = "green", t


def drive(x: Intersection, timing: EnvelopeTiming, start: int, requests: Requests) -> None:
    """Run the envelope through ``requests`` and check every output step."""
    env = SafetyEnvelope(x, timing, start)
    check = Checker(x, timing, start)
    t = start
    for request, hold, steps in requests:
        for _ in range(steps):
            shown = env.step(t, request, hold=hold)
            check.see(t, request, hold, shown, env.phase)
            t += 1
    ongoing = t - env.hold_since if env.hold_since is not None else 0.0
    held = sum(h.duration_s for h in env.holds) + ongoing
    assert held == check.held_steps, f"holds recorded {held} s, seen {check.held_steps} s"


# --- strategies -------------------------------------------------------------------------------


@st.composite
def intersections(draw: st.DrawFn, valid_plan: bool = False) -> Intersection:
    """A signal with 2-10 links and a plan of 2-5 green phases (and maybe one more phase
    outside the plan). ``valid_plan``: every plan interval shows yellow where it should."""
    n = draw(st.integers(2, 10))
    k = draw(st.integers(2, 5))
    state = st.lists(st.sampled_from("GGgrrs"), min_size=n, max_size=n).map("".join)
    green = state.filter(lambda s: any(c in GREEN for c in s))
    states = draw(st.lists(green, min_size=k, max_size=k, unique=True))
    order = list(draw(st.permutations(range(k))))
    if not valid_plan:
        for p, pos in draw(st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, 9)))):
            order.insert(pos % (len(order) + 1), p)
            if len(order) > 7:
                break
    plan: list[PlanStep] = []
    kinds = ["yellow", "yellow_red"] if valid_plan else ["yellow", "yellow_red", "none", "red"]
    for j, p in enumerate(order):
        a, b = states[p], states[order[(j + 1) % len(order)]]
        plan.append(PlanStep(a, draw(st.integers(1, 45))))
        losing = [i for i in range(n) if a[i] in GREEN and b[i] not in GREEN]
        if a == b or not losing:
            continue
        kind = draw(st.sampled_from(kinds))
        kept = "".join(a[i] if a[i] in GREEN and b[i] in GREEN else "r" for i in range(n))
        if kind in ("yellow", "yellow_red"):
            yellow = "".join("y" if i in losing else kept[i] for i in range(n))
            plan.append(PlanStep(yellow, draw(st.integers(1, 6))))
        if kind in ("yellow_red", "red") and set(kept) == {"r"}:
            plan.append(PlanStep("r" * n, draw(st.integers(1, 3))))
    # Conflicts consistent with the plan: links the plan shows green together rarely conflict
    # (then the plan approves them, as on gneJ210 of ingolstadt7), others mostly do.
    together = {
        (i, j) for s in states for i in range(n) for j in range(i + 1, n) if {s[i], s[j]} <= GREEN
    }
    codes = draw(st.lists(st.integers(0, 7), min_size=n * n, max_size=n * n))
    conflicts: list[set[int]] = [set() for _ in range(n)]
    yields: list[set[int]] = [set() for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            code = codes[i * n + j]
            if code >= (7 if (i, j) in together else 2):
                conflicts[i].add(j)
                conflicts[j].add(i)
            if code in (3, 4):
                yields[i].add(j)
            if code == 5:
                yields[j].add(i)
    steps = tuple(plan)
    phases = phases_from_plan(steps)
    cycle = int(sum(s.duration_s for s in steps))
    x = Intersection(
        id="x",
        links=tuple(SignalLink(i, f"in{i}", f"out{i}") for i in range(n)),
        conflicts=tuple(frozenset(c) for c in conflicts),
        yields_to=tuple(frozenset(y) for y in yields),
        plan=steps,
        plan_offset_s=draw(st.integers(0, cycle)),
        phases=phases,
        yellow_s=draw(st.integers(1, 5)),
        all_red_s=draw(st.integers(0, 3)),
        transitions=transitions_from_plan(steps, phases),
    )
    extra = draw(st.lists(st.sampled_from("GgG"), min_size=n, max_size=n).map("".join))
    if valid_plan or not draw(st.booleans()):
        return x
    safe = ["r"] * n  # a phase outside the plan (field configuration), safe link by link
    for i in draw(st.permutations(range(n))):
        safe[i] = extra[i]
        if x.unapproved_pairs("".join(safe)):
            safe[i] = "r"
    state_extra = "".join(safe)
    if state_extra in {p.state for p in phases}:
        return x
    return dataclasses.replace(x, phases=(*phases, Phase(len(phases), state_extra, 0.0)))


@st.composite
def timings(draw: st.DrawFn, x: Intersection) -> EnvelopeTiming:
    by_phase = draw(
        st.lists(st.tuples(st.integers(0, len(x.phases) - 1), st.integers(1, 12)), max_size=2)
    )
    return EnvelopeTiming(
        min_green_s=draw(st.integers(1, 8)),
        max_green_s=draw(st.integers(5, 60)),
        min_green_by_phase=tuple((x.id, p, float(s)) for p, s in by_phase),
    )


def request_lists(phases: int) -> st.SearchStrategy[Requests]:
    ask = st.one_of(st.none(), st.integers(0, phases - 1))
    hold = st.sampled_from([False, False, True])
    return st.lists(st.tuples(ask, hold, st.integers(1, 40)), min_size=1, max_size=30)


# --- made-up intersections --------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_every_output_step_keeps_every_invariant(data: st.DataObject) -> None:
    x = data.draw(intersections())
    timing = data.draw(timings(x))
    start = data.draw(st.integers(0, 400))
    drive(x, timing, start, data.draw(request_lists(len(x.phases))))


@settings(max_examples=150, deadline=None)
@given(x=intersections(), data=st.data())
def test_a_phase_with_unapproved_conflicts_is_refused(x: Intersection, data: st.DataObject) -> None:
    n = len(x.links)
    pairs = [(i, j) for i in range(n) for j in x.conflicts[i] if i < j]
    unapproved = [pair for pair in pairs if pair not in x.plan_approved_pairs]
    assume(unapproved)
    i, j = data.draw(st.sampled_from(unapproved))
    state = "".join("G" if k in (i, j) else "r" for k in range(n))
    bad = dataclasses.replace(x, phases=(*x.phases, Phase(len(x.phases), state, 0.0)))
    with pytest.raises(ValueError, match="conflicting greens"):
        SafetyEnvelope(bad, EnvelopeTiming(), 0)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_plan_follower_shows_the_stored_plan_exactly(data: st.DataObject) -> None:
    x = data.draw(intersections(valid_plan=True))
    timing = data.draw(timings(x))
    start = data.draw(st.integers(0, 400))
    env = SafetyEnvelope(x, timing, start)
    assert not env.rules.replaced
    for t in range(start, start + 2 * int(x.cycle_s) + 1):
        k, _ = plan_position(x, t)
        assert env.step(t, next_green_phase(x, k)) == x.plan[k].state, t


# --- the RESCO maps' real intersections -------------------------------------------------------


@cache
def resco_models(name: str) -> tuple[Intersection, ...]:
    return intersections_from_net(read_net(load_scenario(resco_config(name)).net_file))


@pytest.fixture(scope="module", params=RESCO_MAPS)
def resco(request: pytest.FixtureRequest) -> tuple[Intersection, ...]:
    return resco_models(str(request.param))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_resco_intersections_keep_every_invariant(
    resco: tuple[Intersection, ...], data: st.DataObject
) -> None:
    x = data.draw(st.sampled_from(resco))
    timing = data.draw(timings(x))
    start = data.draw(st.integers(0, 3600))
    drive(x, timing, start, data.draw(request_lists(len(x.phases))))


def test_resco_plans_are_followed_exactly(resco: tuple[Intersection, ...]) -> None:
    for x in resco:
        env = SafetyEnvelope(x, EnvelopeTiming(), 25200)
        assert not env.rules.replaced
        for t in range(25200, 25200 + 2 * int(x.cycle_s)):
            k, _ = plan_position(x, t)
            assert env.step(t, next_green_phase(x, k)) == x.plan[k].state
