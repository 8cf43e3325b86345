"""What a controller knows about an intersection: links, conflicts, phases and the stored plan.

Pure data, no SUMO. ``citybrain/netmodel/net.py`` builds these from a SUMO net; a field deployment
builds them from the signal's own configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

GREEN = frozenset("Gg")
"""Link states that let traffic go (``G`` has priority, ``g`` must yield)."""
CLEARANCE = frozenset("yYu")
"""Link states of a change interval (yellow, and red+yellow before green)."""
YELLOW = frozenset("yY")
"""Link states that tell traffic to stop before the light turns red."""


def green_links(state: str) -> frozenset[int]:
    """Indices of the links that are green in a link-state string."""
    return frozenset(i for i, c in enumerate(state) if c in GREEN)


def is_clearance(state: str) -> bool:
    """True for a step that belongs to a change interval (some link yellow)."""
    return any(c in CLEARANCE for c in state)


@dataclass(frozen=True, slots=True)
class SignalLink:
    """One controlled movement: from an incoming lane to an outgoing lane."""

    index: int
    in_lane: str
    out_lane: str
    also: tuple[tuple[str, str], ...] = ()
    """Further (in lane, out lane) movements the same signal index controls."""

    @property
    def movements(self) -> tuple[tuple[str, str], ...]:
        return ((self.in_lane, self.out_lane), *self.also)


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One step of a stored signal plan: the link states shown, and for how long."""

    state: str
    duration_s: float


@dataclass(frozen=True, slots=True)
class Phase:
    """A green phase: a set of links that may be green together."""

    index: int
    state: str
    plan_duration_s: float
    """How long the stored plan shows this phase per cycle (its first occurrence)."""

    @property
    def green(self) -> frozenset[int]:
        return green_links(self.state)


@dataclass(frozen=True)
class Intersection:
    """A signalized intersection (one signal controller, possibly several junctions).

    ``conflicts[i]`` holds the links whose paths cross or merge with link ``i`` in a way the
    junction logic forbids to run together unless one of them yields; ``yields_to[i]`` the links
    that link ``i`` must give way to when both are green.
    """

    id: str
    links: tuple[SignalLink, ...]
    conflicts: tuple[frozenset[int], ...]
    yields_to: tuple[frozenset[int], ...]
    plan: tuple[PlanStep, ...]
    plan_offset_s: float
    phases: tuple[Phase, ...]
    yellow_s: float
    all_red_s: float
    transitions: dict[tuple[int, int], tuple[PlanStep, ...]] = field(compare=False)
    """Change intervals the stored plan uses between two green phases, by phase indices."""

    def __post_init__(self) -> None:
        n = len(self.links)
        if any(len(step.state) != n for step in self.plan):
            raise ValueError(f"intersection {self.id}: plan states must have {n} links")
        if not self.phases:
            raise ValueError(f"intersection {self.id}: the plan has no green phase")
        if len(self.conflicts) != n or len(self.yields_to) != n:
            raise ValueError(f"intersection {self.id}: conflict tables must have {n} rows")

    @cached_property
    def in_lanes(self) -> tuple[str, ...]:
        """Incoming lanes in link order, each once."""
        return tuple(dict.fromkeys(i for link in self.links for i, _ in link.movements))

    @property
    def cycle_s(self) -> float:
        return sum(step.duration_s for step in self.plan)

    def phase_lanes(self, phase: int) -> tuple[str, ...]:
        """Incoming lanes that have at least one green link in ``phase``."""
        green = self.phases[phase].green
        return tuple(
            dict.fromkeys(lane for i in sorted(green) for lane, _ in self.links[i].movements)
        )

    def lane_links(self, lane: str) -> tuple[int, ...]:
        return tuple(link.index for link in self.links if any(i == lane for i, _ in link.movements))

    def is_conflicting(self, i: int, j: int) -> bool:
        return j in self.conflicts[i]

    def unsafe_pairs(self, state: str) -> list[tuple[int, int]]:
        """Pairs of green links in ``state`` that conflict and where neither yields.

        A permissive green (``g``) that yields to a conflicting priority green is allowed, as on
        a left turn across oncoming traffic; two priority greens across each other are not.
        """
        green = sorted(green_links(state))
        bad = []
        for a_pos, a in enumerate(green):
            for b in green[a_pos + 1 :]:
                if b in self.conflicts[a] and not self._one_yields(state, a, b):
                    bad.append((a, b))
        return bad

    @cached_property
    def plan_approved_pairs(self) -> frozenset[tuple[int, int]]:
        """Unsafe pairs (see ``unsafe_pairs``) that the stored plan itself shows together.

        The stored plan is the net engineer's approved program: a pair it shows green together
        (two priority links merging into one lane, say) is accepted, and only such a pair.
        """
        return frozenset(pair for step in self.plan for pair in self.unsafe_pairs(step.state))

    def unapproved_pairs(self, state: str) -> list[tuple[int, int]]:
        """Unsafe pairs of ``state`` that the stored plan never shows together."""
        approved = self.plan_approved_pairs
        return [pair for pair in self.unsafe_pairs(state) if pair not in approved]

    def _one_yields(self, state: str, a: int, b: int) -> bool:
        return (state[a] == "g" and b in self.yields_to[a]) or (
            state[b] == "g" and a in self.yields_to[b]
        )

    def phase_of_state(self, state: str) -> int | None:
        for phase in self.phases:
            if phase.state == state:
                return phase.index
        return None

    def change_interval(self, src: int, dst: int) -> tuple[PlanStep, ...]:
        """The steps shown between green phases ``src`` and ``dst``.

        The stored plan's own change interval when it has one for this pair; otherwise yellow
        for every link that loses its green, then all-red, with the intersection's times.
        """
        if src == dst:
            return ()
        known = self.transitions.get((src, dst))
        if known is not None:
            return known
        return self.generated_interval(src, dst)

    def generated_interval(self, src: int, dst: int) -> tuple[PlanStep, ...]:
        """Yellow (``yellow_s``) for the links that lose green, then all-red (``all_red_s``).

        Links green in both phases keep their green; no link turns green before ``dst``.
        """
        if src == dst:
            return ()
        a, b = self.phases[src].state, self.phases[dst].state
        losing = [i for i in range(len(a)) if a[i] in GREEN and b[i] not in GREEN]
        if not losing:
            return ()
        yellow = "".join(
            "y" if i in losing else (a[i] if a[i] in GREEN else "r") for i in range(len(a))
        )
        steps = [PlanStep(yellow, self.yellow_s)]
        if self.all_red_s > 0:
            red = "".join(a[i] if (a[i] in GREEN and b[i] in GREEN) else "r" for i in range(len(a)))
            steps.append(PlanStep(red, self.all_red_s))
        return tuple(steps)


def phases_from_plan(plan: Iterable[PlanStep]) -> tuple[Phase, ...]:
    """The distinct green phases of a plan, in plan order."""
    seen: dict[str, Phase] = {}
    for step in plan:
        if is_clearance(step.state) or not green_links(step.state) or step.state in seen:
            continue
        seen[step.state] = Phase(len(seen), step.state, step.duration_s)
    return tuple(seen.values())


def transitions_from_plan(
    plan: tuple[PlanStep, ...], phases: tuple[Phase, ...]
) -> dict[tuple[int, int], tuple[PlanStep, ...]]:
    """Change intervals between consecutive green phases of a cyclic plan."""
    index = {p.state: p.index for p in phases}
    greens = [k for k, step in enumerate(plan) if step.state in index]
    found: dict[tuple[int, int], tuple[PlanStep, ...]] = {}
    n = len(plan)
    for pos, k in enumerate(greens):
        nxt = greens[(pos + 1) % len(greens)]
        between = []
        j = (k + 1) % n
        while j != nxt:
            between.append(plan[j])
            j = (j + 1) % n
        key = (index[plan[k].state], index[plan[nxt].state])
        if key[0] != key[1]:
            found.setdefault(key, tuple(between))
    return found
