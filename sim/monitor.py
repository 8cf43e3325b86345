"""The signal monitor: checks the link states SUMO actually showed, step by step.

It sees only the lamps (one state string per signal and step, and whether the controller
declared a hold), never the envelope's internals, and checks the envelope's invariants on
them: no unapproved conflicting greens, no green straight to red, no yellow shorter than the
shortest one a change interval gives that link, no green shorter than its minimum, no phase
green beyond its maximum without a hold. Work is done only when a signal's state changes.

A run under citybrain's control fails on any violation (``raise_if_any``). A run under the
city's own program (``fixed``, SUMO's actuated logic) is not citybrain's doing: what the city's
program shows against these rules is reported as findings (``findings``), and the run goes on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from citybrain.control.envelope import EnvelopeTiming, SignalRules, signal_rules
from citybrain.control.model import GREEN, YELLOW, Intersection
from citybrain.errors import ScenarioError

RULES = ("conflict", "green_to_red", "short_yellow", "short_green", "long_green")
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class Violation:
    time_s: float
    signal: str
    rule: str
    """One of ``RULES``."""
    detail: str


@dataclass(frozen=True, slots=True)
class _Look:
    """What one distinct state string means at one signal."""

    green: frozenset[int]
    yellow: frozenset[int]
    phase: int | None
    conflicts: tuple[tuple[int, int], ...]


class _Signal:
    def __init__(self, x: Intersection, rules: SignalRules) -> None:
        n = len(x.links)
        self.x = x
        self.max_green = rules.max_green_s
        self.min_green = [
            min((rules.min_green_s[p.index] for p in x.phases if i in p.green), default=0.0)
            for i in range(n)
        ]
        self.min_yellow = _shortest_yellows(n, rules)
        self.looks: dict[str, _Look] = {}
        self.state = ""
        self.look: _Look | None = None
        self.green_from: list[float | None] = [None] * n
        self.yellow_from: list[float | None] = [None] * n
        self.phase_from = 0.0
        self.long_reported = False

    def look_of(self, state: str) -> _Look:
        look = self.looks.get(state)
        if look is None:
            if len(state) != len(self.x.links):
                raise ValueError(f"signal {self.x.id}: state {state!r} has the wrong length")
            look = _Look(
                frozenset(i for i, c in enumerate(state) if c in GREEN),
                frozenset(i for i, c in enumerate(state) if c in YELLOW),
                self.x.phase_of_state(state),
                tuple(self.x.unapproved_pairs(state)),
            )
            self.looks[state] = look
        return look


class SignalMonitor:
    """Collects every ``Violation`` of the lamps shown at the given intersections."""

    def __init__(self, intersections: Iterable[Intersection], timing: EnvelopeTiming) -> None:
        self._timing = timing
        self._signals = {x.id: _Signal(x, signal_rules(x, timing)) for x in intersections}
        self.violations: list[Violation] = []

    def switch(self, x: Intersection) -> None:
        """From now on judge ``x.id`` by ``x`` (its signal switched to another program).

        What the signal showed so far is forgotten, as on its first state.
        """
        self._signals[x.id] = _Signal(x, signal_rules(x, self._timing))

    def findings(self, examples: int = 5) -> dict[str, Any]:
        """The violations as a report: how many of each rule, by signal, and the first few."""
        counts = Counter(v.rule for v in self.violations)
        by_signal = Counter(v.signal for v in self.violations)
        return {
            "total": len(self.violations),
            "by_rule": {rule: counts[rule] for rule in RULES if counts[rule]},
            "by_signal": dict(by_signal.most_common()),
            "first": [
                {"time_s": v.time_s, "signal": v.signal, "rule": v.rule, "detail": v.detail}
                for v in self.violations[:examples]
            ],
        }

    def observe(self, time_s: float, signal_id: str, state: str, hold: bool = False) -> None:
        """Record that ``signal_id`` showed ``state`` from ``time_s`` (until its next call).

        Call once per step and signal, in time order; ``hold`` is whether the controller
        declared a hold (rest in green, preemption) for this step.
        """
        s = self._signals[signal_id]
        if state != s.state:
            self._changed(s, time_s, state)
        look = s.look
        if look is None or look.phase is None or hold or s.long_reported:
            return
        green_s = time_s - s.phase_from
        if green_s >= s.max_green[look.phase] - _EPS:
            s.long_reported = True
            self._add(
                time_s,
                s,
                "long_green",
                f"phase {look.phase} green {green_s:g} s, max {s.max_green[look.phase]:g} s, "
                "no hold declared",
                state,
            )

    def raise_if_any(self) -> None:
        """Fail the run (``ScenarioError``, one line) if any violation was seen."""
        if not self.violations:
            return
        counts = Counter(v.rule for v in self.violations)
        kinds = ", ".join(f"{rule} x{counts[rule]}" for rule in RULES if counts[rule])
        first = self.violations[0]
        raise ScenarioError(
            f"signal monitor: {len(self.violations)} violation(s) ({kinds}); first at "
            f"{first.time_s:g} s on {first.signal}: {first.rule}: {first.detail}"
        )

    def _changed(self, s: _Signal, time_s: float, state: str) -> None:
        look = s.look_of(state)
        before = s.look
        if before is not None:  # on the first state seen, every run started before: unknown
            old = s.state
            for i in before.green - look.green:
                if i not in look.yellow:
                    self._add(time_s, s, "green_to_red", f"link {i} {old[i]}->{state[i]}", state)
                start = s.green_from[i]
                if start is not None and time_s - start < s.min_green[i] - _EPS:
                    self._add(
                        time_s,
                        s,
                        "short_green",
                        f"link {i} green {time_s - start:g} s, min {s.min_green[i]:g} s",
                        state,
                    )
                s.green_from[i] = None
            for i in look.green - before.green:
                s.green_from[i] = time_s
            for i in before.yellow - look.yellow:
                start = s.yellow_from[i]
                if start is not None and time_s - start < s.min_yellow[i] - _EPS:
                    self._add(
                        time_s,
                        s,
                        "short_yellow",
                        f"link {i} yellow {time_s - start:g} s, min {s.min_yellow[i]:g} s",
                        state,
                    )
                s.yellow_from[i] = None
            for i in look.yellow - before.yellow:
                s.yellow_from[i] = time_s
        if look.conflicts:
            self._add(time_s, s, "conflict", f"links {list(look.conflicts)} green together", state)
        s.state, s.look = state, look
        s.phase_from = time_s
        s.long_reported = False

    def _add(self, time_s: float, s: _Signal, rule: str, detail: str, state: str) -> None:
        self.violations.append(Violation(time_s, s.x.id, rule, f"{detail} in {state!r}"))


def _shortest_yellows(n: int, rules: SignalRules) -> list[float]:
    """Per link, the shortest yellow any change interval shows it (0 if none does)."""
    shortest: list[float | None] = [None] * n
    for steps in rules.intervals.values():
        run = [0.0] * n
        for step in (*steps, None):
            for i in range(n):
                if step is not None and step.state[i] in YELLOW:
                    run[i] += step.duration_s
                elif run[i] > 0:
                    prev = shortest[i]
                    shortest[i] = run[i] if prev is None else min(prev, run[i])
                    run[i] = 0.0
    return [0.0 if v is None else v for v in shortest]
