"""Turn a route (edge ids) into a ``Corridor`` from the SUMO net's geometry: map data only.

The polyline follows, edge by edge, the shape of a lane that continues onto the route's next
edge (the junction between two edges is crossed in a straight line). Every signalised link
from one route edge onto the next marks an intersection of the corridor: its stop line is the
end of the approach lane, its phases those that show the movement green (priority green
preferred). A route must be connected: each edge leads onto the next one (a lane of it has
a connection there), else it has a gap and is refused. Nothing here looks at vehicles.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from citybrain.control.corridor import Corridor, CorridorSignal, EscortRequest, Polyline
from citybrain.control.model import Intersection
from citybrain.errors import ScenarioError


class NetCorridors:
    """A ``CorridorSource`` over one net (corridors are cached by route)."""

    def __init__(self, net: Any, intersections: tuple[Intersection, ...]) -> None:
        self.net = net
        self.xs = {x.id: x for x in intersections}
        self._cache: dict[tuple[str, ...], Corridor] = {}

    def __call__(self, request: EscortRequest) -> Corridor:
        found = self._cache.get(request.route)
        if found is None:
            found = self._cache[request.route] = corridor_of(
                self.net, self.xs, request.vehicle, request.route
            )
        return dataclasses.replace(found, vehicle=request.vehicle)


def corridor_of(
    net: Any, xs: dict[str, Intersection], vehicle: str, route: tuple[str, ...]
) -> Corridor:
    edges = [e for e in route if not e.startswith(":")]
    if not edges:
        raise ScenarioError(f"escort {vehicle}: empty route")
    for e in edges:
        if not net.hasEdge(e):
            raise ScenarioError(f"escort {vehicle}: route edge {e!r} is not in the net")
    for here, there in itertools.pairwise(edges):
        if not net.getEdge(here).getConnections(net.getEdge(there)):
            raise ScenarioError(
                f"escort {vehicle}: the route has a gap: no lane of edge {here!r} leads onto "
                f"{there!r}"
            )
    points: list[tuple[float, float]] = []
    speed_from: list[float] = []
    speeds: list[float] = []
    signals: list[CorridorSignal] = []
    s = 0.0
    for i, edge_id in enumerate(edges):
        edge = net.getEdge(edge_id)
        nxt = net.getEdge(edges[i + 1]) if i + 1 < len(edges) else None
        conns = list(edge.getConnections(nxt)) if nxt is not None else []
        from_lanes = [c.getFromLane() for c in conns]
        lane = from_lanes[0] if from_lanes else edge.getLanes()[0]
        shape = [(float(p[0]), float(p[1])) for p in lane.getShape()]
        if points:
            s += _dist(points[-1], shape[0])
        speed_from.append(s)
        speeds.append(float(lane.getSpeed()))
        for a, b in itertools.pairwise(shape):
            points.append(a)
            s += _dist(a, b)
        points.append(shape[-1])
        stop_m = s
        tls = {c.getTLSID() for c in conns if c.getTLSID()}
        for tl in sorted(tls):
            x = xs.get(tl)
            if x is None:
                continue
            links = tuple(sorted({c.getTLLinkIndex() for c in conns if c.getTLSID() == tl}))
            phases = serving_phases(x, links)
            if not phases:
                continue
            start = nxt.getLanes()[0].getShape()[0] if nxt is not None else shape[-1]
            exit_m = stop_m + _dist(shape[-1], (float(start[0]), float(start[1])))
            approach = tuple(sorted({c.getFromLane().getID() for c in conns}))
            others = tuple(sorted({ln.getID() for ln in edge.getLanes()} - set(approach)))
            signals.append(
                CorridorSignal(
                    tl, stop_m, exit_m, approach, links, phases, others, edge_m=speed_from[-1]
                )
            )
    points = _dedupe(points)
    if len(points) < 2:
        raise ScenarioError(f"escort {vehicle}: the route has no length")
    return Corridor(
        vehicle, Polyline(tuple(points)), tuple(speed_from), tuple(speeds), tuple(signals)
    )


def serving_phases(x: Intersection, links: tuple[int, ...]) -> tuple[int, ...]:
    """Phases showing every link of the movement green, priority green first; else those
    showing most of them."""
    if not links:
        return ()
    scored = []
    for p in x.phases:
        state = p.state
        green = sum(state[i] in "Gg" for i in links)
        score = sum(2 if state[i] == "G" else 1 if state[i] == "g" else 0 for i in links)
        if green:
            scored.append((green, score, p.index))
    if not scored:
        return ()
    best = max((g, sc) for g, sc, _ in scored)
    return tuple(p for g, sc, p in scored if (g, sc) == best)


def _dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5)


def _dedupe(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for p in points:
        if not out or _dist(out[-1], p) > 1e-6:
            out.append(p)
    return out
