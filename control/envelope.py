"""The safety envelope: the only way from a controller's request to a signal's lamps.

A small state machine per intersection. Controllers ask for a green phase; the envelope
decides what the lamps show. What it guarantees, on every step:

- no two conflicting links green together unless one yields, or the stored plan itself shows
  that pair (``Intersection.unapproved_pairs``); checked for every phase and every change
  interval when the envelope is built, which refuses an intersection that breaks it;
- every green lasts at least its minimum (``EnvelopeTiming``; a phase the stored plan shows
  for less keeps the plan's own time);
- no green runs beyond its maximum unless the controller declares a hold (rest in green,
  preemption); at the maximum the envelope itself changes to the next phase in plan order;
- every change of right-of-way runs its whole change interval (the plan's own, or yellow then
  all-red), with exact durations, and every link that loses green shows yellow first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from citybrain.control.model import GREEN, YELLOW, Intersection, PlanStep, is_clearance
from citybrain.errors import ConfigError


@dataclass(frozen=True, slots=True)
class EnvelopeTiming:
    min_green_s: float = 5.0
    """Shortest green; a phase the stored plan shows for less keeps the plan's own time."""
    max_green_s: float = 120.0
    """Longest green without a declared hold; never below the plan's own longest green."""
    min_green_by_phase: tuple[tuple[str, int, float], ...] = ()
    """Per-phase minimum greens as (intersection id, phase index, seconds)."""

    def __post_init__(self) -> None:
        if self.min_green_s < 0:
            raise ConfigError(f"envelope.min_green_s must not be negative, not {self.min_green_s}")
        if self.max_green_s <= 0:
            raise ConfigError(f"envelope.max_green_s must be positive, not {self.max_green_s}")
        for signal, phase, seconds in self.min_green_by_phase:
            if seconds < 0:
                raise ConfigError(
                    f"envelope.min_green_by_phase: {signal} phase {phase} must not be negative"
                )

    def min_green_for(self, signal: str, phase: int) -> float:
        """The configured minimum green of one phase (before the plan's own shorter greens)."""
        for s, p, seconds in self.min_green_by_phase:
            if s == signal and p == phase:
                return seconds
        return self.min_green_s


@dataclass(frozen=True, slots=True)
class Hold:
    """A green the controller held beyond its maximum (rest in green, preemption)."""

    phase: int
    start_s: float
    """When the envelope would otherwise have ended the green."""
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SignalRules:
    """What the envelope enforces at one intersection, derived and checked once."""

    min_green_s: tuple[float, ...]
    max_green_s: tuple[float, ...]
    """By phase; unbounded for an intersection with one phase (nothing else to serve)."""
    next_phase: tuple[int, ...]
    """The phase the plan serves after each phase: where a green ends at its maximum."""
    intervals: dict[tuple[int, int], tuple[PlanStep, ...]]
    """Change interval between every two phases, without steps of zero duration, and without
    closing steps that already show the new phase (an all-red when no link gains green)."""
    replaced: tuple[tuple[int, int], ...]
    """Plan intervals that skipped a yellow, replaced by generated (yellow, all-red) ones."""


def signal_rules(x: Intersection, timing: EnvelopeTiming) -> SignalRules:
    """The rules of ``x``; ``ValueError`` if a phase or interval shows unapproved conflicts."""
    n = len(x.phases)
    for p in x.phases:
        _refuse_conflicts(x, p.state, f"phase {p.index}")
    intervals: dict[tuple[int, int], tuple[PlanStep, ...]] = {}
    replaced = []
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            steps = _positive(x.change_interval(a, b))
            for step in steps:
                _refuse_conflicts(x, step.state, f"the change from phase {a} to {b}")
            if skipped_yellow(_sequence(x, a, b, steps)):
                replaced.append((a, b))
                steps = _positive(x.generated_interval(a, b))
                if skipped_yellow(_sequence(x, a, b, steps)):
                    raise ValueError(
                        f"intersection {x.id}: a change from phase {a} to {b} needs a yellow "
                        f"time (yellow_s is {x.yellow_s:g})"
                    )
                for step in steps:
                    _refuse_conflicts(x, step.state, f"the change from phase {a} to {b}")
            while steps and steps[-1].state == x.phases[b].state:  # already the new green
                steps = steps[:-1]
            intervals[(a, b)] = steps
    shortest, longest = _plan_greens(x.plan)
    min_green = tuple(
        min(timing.min_green_for(x.id, p.index), shortest.get(p.state, float("inf")))
        for p in x.phases
    )
    max_green = tuple(
        max(timing.max_green_s, longest.get(p.state, 0.0), min_green[p.index])
        if n > 1
        else float("inf")
        for p in x.phases
    )
    return SignalRules(min_green, max_green, _next_phases(x), intervals, tuple(replaced))


def skipped_yellow(states: Sequence[str]) -> list[tuple[int, int]]:
    """(position, link) wherever a link goes from green to anything but yellow."""
    return [
        (k, i)
        for k in range(1, len(states))
        for i, (before, after) in enumerate(zip(states[k - 1], states[k], strict=True))
        if before in GREEN and after not in GREEN and after not in YELLOW
    ]


def plan_position(x: Intersection, time_s: float) -> tuple[int, float]:
    """Which step of the stored plan runs at ``time_s``, and for how long it has run.

    SUMO runs a static plan aligned to absolute time: position = (time - offset) mod cycle.
    """
    cycle = x.cycle_s
    pos = (time_s - x.plan_offset_s) % cycle if cycle > 0 else 0.0
    for k, step in enumerate(x.plan):
        if pos < step.duration_s:
            return k, pos
        pos -= step.duration_s
    return len(x.plan) - 1, x.plan[-1].duration_s


def next_green_phase(x: Intersection, step: int) -> int:
    """The green phase the plan serves at or after plan step ``step``."""
    n = len(x.plan)
    for k in range(n):
        phase = x.phase_of_state(x.plan[(step + k) % n].state)
        if phase is not None:
            return phase
    return 0


class SafetyEnvelope:
    """Turns phase requests into the link states one intersection shows."""

    def __init__(self, x: Intersection, timing: EnvelopeTiming, start_s: float) -> None:
        self.x = x
        self.rules = signal_rules(x, timing)
        self.holds: list[Hold] = []
        """Greens held beyond their maximum, once they ended."""
        self.hold_since: float | None = None
        """When the green now held beyond its maximum would have ended, while it lasts."""
        k, elapsed = plan_position(x, start_s)
        self._pending: list[PlanStep] = []
        self._step_end = start_s
        self.phase = next_green_phase(x, k)
        self.green_since = start_s - elapsed
        self.shown = x.phases[self.phase].state
        if is_clearance(x.plan[k].state) or x.phase_of_state(x.plan[k].state) is None:
            rest = []
            j = k
            while x.phase_of_state(x.plan[j].state) is None:
                rest.append(x.plan[j])
                j = (j + 1) % len(x.plan)
            self._begin_clearance(rest, start_s - elapsed)

    @classmethod
    def resume(
        cls,
        x: Intersection,
        timing: EnvelopeTiming,
        phase: int,
        green_since_s: float,
    ) -> SafetyEnvelope:
        """An envelope that takes over a signal showing ``phase``'s green since
        ``green_since_s`` (reported by its cabinet): its minimum and maximum count from then."""
        if not 0 <= phase < len(x.phases):
            raise ValueError(f"intersection {x.id} has no phase {phase}")
        envelope = cls(x, timing, green_since_s)
        envelope._pending = []
        envelope._step_end = green_since_s
        envelope.phase = phase
        envelope.green_since = green_since_s
        envelope.shown = x.phases[phase].state
        return envelope

    @property
    def in_clearance(self) -> bool:
        return bool(self._pending)

    def green_time(self, now_s: float) -> float:
        """How long the current phase has been green (0 during a change interval)."""
        return 0.0 if self._pending else now_s - self.green_since

    def step(self, now_s: float, request: int | None, hold: bool = False) -> str:
        """Advance to ``now_s`` with the controller's current request; return the lamp states.

        ``hold`` declares rest in green or preemption: the current green may then run beyond
        its maximum while the controller does not ask for another phase.
        """
        if request is not None and not 0 <= request < len(self.x.phases):
            raise ValueError(f"intersection {self.x.id} has no phase {request}")
        ended = False
        while self._pending and now_s >= self._step_end:
            self._pending.pop(0)
            if self._pending:
                self._step_end += self._pending[0].duration_s
                self.shown = self._pending[0].state
            else:
                self.green_since = self._step_end
                self.shown = self.x.phases[self.phase].state
                ended = True
        if not self._pending and not ended:
            self._decide(now_s, request, hold)
        return self.shown

    def _decide(self, now_s: float, request: int | None, hold: bool) -> None:
        current = self.phase
        green_s = now_s - self.green_since
        asks_other = request is not None and request != current
        over_max = green_s >= self.rules.max_green_s[current]
        holding = over_max and hold and not asks_other
        if holding and self.hold_since is None:
            self.hold_since = now_s
        elif not holding and self.hold_since is not None:
            self.holds.append(Hold(current, self.hold_since, now_s))
            self.hold_since = None
        if holding or green_s < self.rules.min_green_s[current]:
            return
        if request is not None and asks_other:
            target = request
        elif over_max:
            target = self.rules.next_phase[current]
        else:
            return
        if target == current:
            return
        self.phase = target
        steps = self.rules.intervals[(current, target)]
        if steps:
            self._begin_clearance(list(steps), now_s)
        else:
            self.green_since = now_s
            self.shown = self.x.phases[target].state

    def _begin_clearance(self, steps: list[PlanStep], start_s: float) -> None:
        self._pending = list(steps)
        self._step_end = start_s + steps[0].duration_s
        self.shown = steps[0].state


def _positive(steps: tuple[PlanStep, ...]) -> tuple[PlanStep, ...]:
    return tuple(s for s in steps if s.duration_s > 0)


def _sequence(x: Intersection, a: int, b: int, steps: tuple[PlanStep, ...]) -> list[str]:
    return [x.phases[a].state, *(s.state for s in steps), x.phases[b].state]


def _refuse_conflicts(x: Intersection, state: str, what: str) -> None:
    bad = x.unapproved_pairs(state)
    if bad:
        raise ValueError(
            f"intersection {x.id}: {what} shows conflicting greens {bad} "
            "that the stored plan never shows together"
        )


def _plan_greens(plan: tuple[PlanStep, ...]) -> tuple[dict[str, float], dict[str, float]]:
    """Shortest plan step and longest run of consecutive plan steps, by state (cyclic)."""
    shortest: dict[str, float] = {}
    longest: dict[str, float] = {}
    n = len(plan)
    first = next((k for k in range(n) if plan[k].state != plan[k - 1].state), 0)
    run_state, run_s = "", 0.0
    for k in range(n):
        step = plan[(first + k) % n]
        shortest[step.state] = min(shortest.get(step.state, step.duration_s), step.duration_s)
        run_s = run_s + step.duration_s if step.state == run_state else step.duration_s
        run_state = step.state
        longest[step.state] = max(longest.get(step.state, 0.0), run_s)
    return shortest, longest


def _next_phases(x: Intersection) -> tuple[int, ...]:
    n = len(x.plan)
    order = [x.phase_of_state(step.state) for step in x.plan]
    found = []
    for p in x.phases:
        nxt = (p.index + 1) % len(x.phases)
        if p.index in order:
            k = order.index(p.index)
            later = (order[(k + j) % n] for j in range(1, n))
            nxt = next((q for q in later if q is not None and q != p.index), p.index)
        found.append(nxt)
    return tuple(found)
