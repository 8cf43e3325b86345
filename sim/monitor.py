"""The signal monitor: checks the link states SUMO actually showed, step by step.

It sees only the lamps (one state string per signal and step, and whether the controller
declared a hold), never the envelope's internals, and applies the lamp rules of
``control/monitor.py`` to them (the same rules a field cabinet applies to every command).
Work is done only when a signal's state changes.

A run under citybrain's control fails on any violation (``raise_if_any``). A run under the
city's own program (``fixed``, SUMO's actuated logic) is not citybrain's doing: what the city's
program shows against these rules is reported as findings (``findings``), and the run goes on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from citybrain.control.envelope import EnvelopeTiming
from citybrain.control.model import Intersection
from citybrain.control.monitor import RULES, LampRules, LampWatch
from citybrain.errors import ScenarioError

__all__ = ["RULES", "SignalMonitor", "Violation"]


@dataclass(frozen=True, slots=True)
class Violation:
    time_s: float
    signal: str
    rule: str
    """One of ``RULES``."""
    detail: str


class SignalMonitor:
    """Collects every ``Violation`` of the lamps shown at the given intersections."""

    def __init__(self, intersections: Iterable[Intersection], timing: EnvelopeTiming) -> None:
        self._timing = timing
        self._signals = {x.id: LampWatch(x, LampRules.of(x, timing)) for x in intersections}
        self.violations: list[Violation] = []

    def switch(self, x: Intersection) -> None:
        """From now on judge ``x.id`` by ``x`` (its signal switched to another program).

        What the signal showed so far is forgotten, as on its first state.
        """
        self._signals[x.id] = LampWatch(x, LampRules.of(x, self._timing))

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
        for f in self._signals[signal_id].observe(time_s, state, hold):
            self.violations.append(Violation(time_s, signal_id, f.rule, f"{f.detail} in {state!r}"))

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
