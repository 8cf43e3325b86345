"""Hand-back after a preemption: serve the phases that waited longest, once each, then let go.

While an ambulance's green was held, the other phases of that signal stood red and their
queues grew. A controller left to itself may well serve the busy main road again first (it
carries most vehicles), and the cross street then waits a second time. The recovery serves
every phase that has vehicles waiting, in order of how long it has gone without green
(longest first), for as long as its queue takes to discharge (start-up lost time plus one
headway per queued vehicle, within the minimum green and ``max_green_s``), then hands the
signal back to the normal controller. The extra delay of cross traffic is bounded by one
discharge of what queued during the hold, instead of depending on the normal controller's
next choice. The whole recovery is capped at ``max_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from citybrain.control.port import SignalView


@dataclass(frozen=True, slots=True)
class RecoverySettings:
    lost_time_s: float
    headway_s: float
    min_green_s: Sequence[float]
    """The envelope's minimum green by phase."""
    max_green_s: float = 40.0
    max_s: float = 150.0
    demand_veh: float = 0.5
    """A phase with fewer vehicles waiting than this is not served by the recovery."""


class Recovery:
    """The recovery of one signal, started when its preemption ends."""

    def __init__(
        self,
        start_s: float,
        held: int,
        last_green_s: Sequence[float],
        demand: Sequence[float],
        settings: RecoverySettings,
    ) -> None:
        self.settings = settings
        self.start_s = start_s
        waiting = [
            q for q in range(len(last_green_s)) if q != held and demand[q] >= settings.demand_veh
        ]
        self.order = sorted(waiting, key=lambda q: (last_green_s[q], q))
        """Phases still to serve, longest without green first."""
        self.served: list[int] = []
        self._need_s: float | None = None

    @property
    def done(self) -> bool:
        return not self.order

    def service_s(self, phase: int, queue_veh: float) -> float:
        """How long phase ``phase`` stays green to discharge ``queue_veh`` vehicles."""
        s = self.settings
        need = s.lost_time_s + s.headway_s * queue_veh
        return min(max(need, s.min_green_s[phase]), max(s.max_green_s, s.min_green_s[phase]))

    def request(self, now_s: float, view: SignalView, demand: Sequence[float]) -> int | None:
        """The phase to ask for now, or None once the recovery is over."""
        if now_s - self.start_s >= self.settings.max_s:
            self.order.clear()
        while self.order:
            target = self.order[0]
            if view.phase != target or view.in_clearance:
                self._need_s = None
                return target
            green = now_s - view.green_since
            if self._need_s is None:  # its green just began: size it by the queue it found
                self._need_s = self.service_s(target, demand[target])
            emptied = demand[target] < self.settings.demand_veh
            if green < self._need_s and not (
                emptied and green >= self.settings.min_green_s[target]
            ):
                return target
            self.served.append(self.order.pop(0))
            self._need_s = None
        return None
