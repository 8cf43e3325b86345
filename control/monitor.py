"""The lamp monitor: the safety rules checked on one signal's lamps alone.

A ``LampWatch`` sees only the state strings a signal shows and when, never a controller's or
an envelope's internals, and judges each change against rules derived once from the
intersection's model (``LampRules``):

- ``conflict``: two conflicting links that may both go (green, yellow, or SUMO's ``O o s``)
  at once, unless one is a permissive green that yields to the other, or the stored program
  (its steps, phases and change intervals) shows the pair going together;
- ``green_to_red``: a link that loses green without showing yellow;
- ``short_yellow``: a yellow shorter than the shortest one a change interval gives that link;
- ``short_all_red``: a link turning green sooner after a conflicting link's yellow ended than
  any change interval lets that pair of links follow each other;
- ``short_green``: a green shorter than its minimum;
- ``long_green``: a phase green beyond its maximum without a declared hold (reported by
  ``observe``; it is not a reason to refuse a state).

``check`` judges a state before it is shown (a cabinet refuses a command that breaks a rule);
``observe`` records what was shown. Pure: no clock, no I/O. Used by ``sim/monitor.py`` on what
SUMO showed and by the field cabinet (``citybrain/field/cabinet.py``) on every command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from citybrain.control.envelope import EnvelopeTiming, SignalRules, signal_rules
from citybrain.control.model import GREEN, YELLOW, Intersection

RULES = (
    "conflict",
    "green_to_red",
    "short_yellow",
    "short_all_red",
    "short_green",
    "long_green",
)
EPS_S = 1e-6
GO = frozenset("GgyYOos")
"""Link letters under which a vehicle may be in or entering the conflict area: greens,
yellows, signal off (``O``, ``o``) and stop-then-go (``s``)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken rule: which (one of ``RULES``) and how, in words."""

    rule: str
    detail: str


@dataclass(frozen=True, slots=True)
class LampRules:
    """The numbers a ``LampWatch`` judges one signal by."""

    min_green_s: tuple[float, ...]
    """Per link: the shortest minimum green of the phases that show it green."""
    min_yellow_s: tuple[float, ...]
    """Per link: the shortest yellow any change interval shows it (0 if none)."""
    min_all_red_s: Mapping[tuple[int, int], float]
    """By (link turning red, conflicting link turning green): the shortest time any change
    interval leaves between the first's yellow ending and the second's green (pairs no
    interval makes follow each other are absent: no requirement)."""
    max_green_s: tuple[float, ...]
    """Per phase (as the envelope's ``SignalRules``)."""
    together: frozenset[tuple[int, int]] = frozenset()
    """Conflicting pairs (low, high) that some state of the program shows both going: the
    only conflicting pairs a state may show going together (a yielding ``g`` excepted)."""

    @classmethod
    def of(cls, x: Intersection, timing: EnvelopeTiming) -> LampRules:
        return cls.from_rules(x, signal_rules(x, timing))

    @classmethod
    def from_rules(cls, x: Intersection, rules: SignalRules) -> LampRules:
        n = len(x.links)
        min_green = tuple(
            min((rules.min_green_s[p.index] for p in x.phases if i in p.green), default=0.0)
            for i in range(n)
        )
        return cls(
            min_green,
            _shortest_yellows(n, rules),
            _shortest_all_red(x, rules),
            rules.max_green_s,
            _going_together(x, rules),
        )


@dataclass(frozen=True, slots=True)
class _Look:
    """What one distinct state string means at one signal."""

    green: frozenset[int]
    yellow: frozenset[int]
    phase: int | None
    conflicts: tuple[tuple[int, int], ...]


class LampWatch:
    """The rules of one signal, applied to the states it shows, in time order."""

    def __init__(self, x: Intersection, rules: LampRules) -> None:
        n = len(x.links)
        self.x = x
        self.rules = rules
        self._approved = x.plan_approved_pairs
        self._looks: dict[str, _Look] = {}
        self.state = ""
        """The state shown now ('' before the first)."""
        self.since_s = 0.0
        """Since when ``state`` is shown."""
        self._look: _Look | None = None
        self.green_from: list[float | None] = [None] * n
        self.yellow_from: list[float | None] = [None] * n
        self.red_from: list[float | None] = [None] * n
        """When each link's yellow ended (None while green or yellow, or if unknown)."""
        self._long_reported = False

    @property
    def phase(self) -> int | None:
        """The phase whose green is shown now, if any."""
        return None if self._look is None else self._look.phase

    def look_of(self, state: str) -> _Look:
        look = self._looks.get(state)
        if look is None:
            if len(state) != len(self.x.links):
                raise ValueError(
                    f"signal {self.x.id}: state {state!r} has the wrong length "
                    f"({len(state)} links, not {len(self.x.links)})"
                )
            look = _Look(
                frozenset(i for i, c in enumerate(state) if c in GREEN),
                frozenset(i for i, c in enumerate(state) if c in YELLOW),
                self.x.phase_of_state(state),
                self._conflicts(state),
            )
            self._looks[state] = look
        return look

    def _conflicts(self, state: str) -> tuple[tuple[int, int], ...]:
        x = self.x
        go = [i for i, c in enumerate(state) if c in GO]
        found = []
        for k, a in enumerate(go):
            for b in go[k + 1 :]:
                if b not in x.conflicts[a] and a not in x.conflicts[b]:
                    continue
                if (a, b) in self.rules.together:
                    continue
                if (state[a] == "g" and b in x.yields_to[a]) or (
                    state[b] == "g" and a in x.yields_to[b]
                ):
                    continue
                found.append((a, b))
        return tuple(found)

    def check(self, time_s: float, state: str) -> list[Finding]:
        """What showing ``state`` from ``time_s`` on would break (nothing is recorded).

        The first state a watch sees is judged for conflicts only (what came before it is
        unknown). ``ValueError`` if ``state`` has the wrong number of links."""
        look = self.look_of(state)
        found: list[Finding] = []
        before = self._look
        if before is not None and state != self.state:
            old = self.state
            for i in sorted(before.green - look.green):
                if i not in look.yellow:
                    found.append(Finding("green_to_red", f"link {i} {old[i]}->{state[i]}"))
                start = self.green_from[i]
                need = self.rules.min_green_s[i]
                if start is not None and time_s - start < need - EPS_S:
                    found.append(
                        Finding(
                            "short_green",
                            f"link {i} green {time_s - start:g} s, min {need:g} s",
                        )
                    )
            for i in sorted(before.yellow - look.yellow):
                start = self.yellow_from[i]
                need = self.rules.min_yellow_s[i]
                if start is not None and time_s - start < need - EPS_S:
                    found.append(
                        Finding(
                            "short_yellow",
                            f"link {i} yellow {time_s - start:g} s, min {need:g} s",
                        )
                    )
            all_red = self.rules.min_all_red_s
            if all_red:
                for j in sorted(look.green - before.green):
                    for i in self.x.conflicts[j]:
                        need = all_red.get((i, j), 0.0)
                        if need <= 0:
                            continue
                        red = self.red_from[i]
                        if i in before.yellow and i not in look.yellow and i not in look.green:
                            red = time_s  # its yellow ends now
                        if red is None or time_s - red >= need - EPS_S:
                            continue
                        if (min(i, j), max(i, j)) in self._approved:
                            continue
                        if state[j] == "g" and i in self.x.yields_to[j]:
                            continue  # a permissive green that gives way needs no all-red
                        found.append(
                            Finding(
                                "short_all_red",
                                f"link {j} green {time_s - red:g} s after conflicting link "
                                f"{i} went red, min {need:g} s",
                            )
                        )
        if look.conflicts:
            found.append(Finding("conflict", f"links {list(look.conflicts)} go together"))
        return found

    def assume(self, state: str, since_s: float) -> None:
        """Start from ``state``, shown since ``since_s``: its greens and yellows count from
        then, its reds as red since then (a cabinet that knows what its lamps show)."""
        look = self.look_of(state)
        for i in range(len(state)):
            self.green_from[i] = since_s if i in look.green else None
            self.yellow_from[i] = since_s if i in look.yellow else None
            self.red_from[i] = None if i in look.green or i in look.yellow else since_s
        self.state, self._look = state, look
        self.since_s = since_s
        self._long_reported = False

    def observe(self, time_s: float, state: str, hold: bool = False) -> list[Finding]:
        """Record that ``state`` is shown from ``time_s``; what it broke.

        Call at least whenever the state changes, in time order; ``hold`` is whether the
        controller declared a hold (then a green beyond its maximum is no finding)."""
        found: list[Finding] = []
        if state != self.state:
            found = self.check(time_s, state)
            self._change(time_s, state)
        look = self._look
        if look is None or look.phase is None or hold or self._long_reported:
            return found
        green_s = time_s - self.since_s
        most = self.rules.max_green_s[look.phase]
        if green_s >= most - EPS_S:
            self._long_reported = True
            found.append(
                Finding(
                    "long_green",
                    f"phase {look.phase} green {green_s:g} s, max {most:g} s, no hold declared",
                )
            )
        return found

    def _change(self, time_s: float, state: str) -> None:
        look = self.look_of(state)
        before = self._look
        if before is not None:
            for i in before.green - look.green:
                self.green_from[i] = None
                if i not in look.yellow:
                    self.red_from[i] = time_s
            for i in look.green - before.green:
                self.green_from[i] = time_s
                self.red_from[i] = None
            for i in before.yellow - look.yellow:
                self.yellow_from[i] = None
                if i not in look.green:
                    self.red_from[i] = time_s
            for i in look.yellow - before.yellow:
                self.yellow_from[i] = time_s
                self.red_from[i] = None
        self.state, self._look = state, look
        self.since_s = time_s
        self._long_reported = False


def _shortest_yellows(n: int, rules: SignalRules) -> tuple[float, ...]:
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
    return tuple(0.0 if v is None else v for v in shortest)


def _shortest_all_red(x: Intersection, rules: SignalRules) -> dict[tuple[int, int], float]:
    """By (i, j): the shortest gap any change interval leaves between link i's yellow ending
    and conflicting link j's green starting (pairs the stored plan shows together excepted)."""
    approved = x.plan_approved_pairs
    shortest: dict[tuple[int, int], float] = {}
    for (a, b), steps in rules.intervals.items():
        states = [x.phases[a].state, *(s.state for s in steps), x.phases[b].state]
        starts = [0.0]
        for s in steps:
            starts.append(starts[-1] + s.duration_s)
        red_at: dict[int, float] = {}
        for k in range(1, len(states)):
            prev, cur = states[k - 1], states[k]
            at = starts[k - 1]
            for i, (p, c) in enumerate(zip(prev, cur, strict=True)):
                if p in YELLOW and c not in YELLOW and c not in GREEN:
                    red_at[i] = at
            for j, (p, c) in enumerate(zip(prev, cur, strict=True)):
                if c in GREEN and p not in GREEN:
                    for i, at_i in red_at.items():
                        if i not in x.conflicts[j] or (min(i, j), max(i, j)) in approved:
                            continue
                        if c == "g" and i in x.yields_to[j]:
                            continue
                        gap = at - at_i
                        shortest[(i, j)] = min(shortest.get((i, j), gap), gap)
    return {pair: gap for pair, gap in shortest.items() if gap > 0}


def _going_together(x: Intersection, rules: SignalRules) -> frozenset[tuple[int, int]]:
    """Conflicting pairs that a state of the program (a plan step, a phase, a step of a change
    interval) shows both going."""
    states = {step.state for step in x.plan} | {p.state for p in x.phases}
    for steps in rules.intervals.values():
        states.update(step.state for step in steps)
    pairs = set()
    for state in states:
        go = [i for i, c in enumerate(state) if c in GO]
        for k, a in enumerate(go):
            for b in go[k + 1 :]:
                if b in x.conflicts[a] or a in x.conflicts[b]:
                    pairs.add((a, b))
    return frozenset(pairs)
