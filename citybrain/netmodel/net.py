"""Build the controllers' intersection models from a SUMO network, with no per-map code."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sumolib

from citybrain.control.model import (
    Intersection,
    PlanStep,
    SignalLink,
    is_clearance,
    phases_from_plan,
    transitions_from_plan,
)
from citybrain.errors import ScenarioError


@dataclass(frozen=True, slots=True)
class ClearanceDefaults:
    """Change-interval times used where the net's own plan does not give one."""

    yellow_s: float = 3.0
    all_red_s: float = 1.0


@dataclass(frozen=True, slots=True)
class SignalPlan:
    """The program a signal runs, when it is not the net's own (SUMO loaded another)."""

    steps: tuple[PlanStep, ...]
    offset_s: float


def net_file_of(path: Path) -> Path:
    """The net file itself, or the net a SUMO configuration (``.sumocfg``) names."""
    if path.suffix != ".sumocfg":
        return path
    if not path.is_file():
        raise ScenarioError(f"scenario file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ScenarioError(f"{path}: not a readable SUMO configuration ({exc})") from None
    for elem in root.iter():
        if elem.tag in ("net-file", "n") and elem.get("value"):
            return (path.parent / elem.get("value", "")).resolve()
    raise ScenarioError(f"{path}: no net-file in the configuration")


def read_net(path: Path, internal: bool = False) -> Any:
    """Read a SUMO net with its signal programs and right-of-way logic.

    ``internal`` also reads the junctions' internal lanes: then the signal links of
    pedestrian crossings (from a walking area onto a crossing) have their connections, and so
    their conflicts with the vehicles' links.
    """
    if not path.is_file():
        raise ScenarioError(f"network file not found: {path}")
    return sumolib.net.readNet(str(path), withPrograms=True, withFoes=True, withInternal=internal)


def has_unmapped_links(intersections: tuple[Intersection, ...]) -> bool:
    """True if a signal controls links the plain net has no lanes for (pedestrian crossings)."""
    return any(not link.in_lane for x in intersections for link in x.links)


def intersections_from_net(
    net: Any,
    defaults: ClearanceDefaults | None = None,
    plans: Mapping[str, SignalPlan] | None = None,
) -> tuple[Intersection, ...]:
    """One model per traffic light of the net, in the net's order.

    ``plans`` gives, by signal id, the program SUMO runs where it is not the net's own (see
    ``sim/loaded.py``); the others use the net's program (the first by program id).
    """
    defaults = defaults or ClearanceDefaults()
    plans = plans or {}
    models = []
    for tls in net.getTrafficLights():
        model = intersection_of(tls, defaults, plans.get(tls.getID()))
        if model is not None:
            models.append(model)
    return tuple(models)


def intersection_of(
    tls: Any, defaults: ClearanceDefaults | None = None, plan_of: SignalPlan | None = None
) -> Intersection | None:
    """The model of one sumolib traffic light running ``plan_of`` (or the net's program)."""
    defaults = defaults or ClearanceDefaults()
    if plan_of is None:
        programs = tls.getPrograms()
        if not programs:
            return None
        program = programs[sorted(programs)[0]]
        plan = tuple(PlanStep(p.state, float(p.duration)) for p in program.getPhases())
        offset = float(program.getOffset() or 0.0)
    else:
        plan, offset = plan_of.steps, plan_of.offset_s
    if not plan:
        return None
    n = len(plan[0].state)
    movements: dict[int, list[tuple[str, str]]] = {}
    junction_index: list[tuple[int, Any, int]] = []
    for in_lane, out_lane, index in tls.getConnections():
        if index >= n or (in_lane.getID(), out_lane.getID()) in movements.get(index, []):
            continue
        conn = _connection(in_lane, out_lane)
        if conn is not None:
            junction_index.append((index, conn.getJunction(), conn.getJunctionIndex()))
        if in_lane.getID().startswith(":"):  # a crossing's link: conflicts, but no road lane
            continue
        movements.setdefault(index, []).append((in_lane.getID(), out_lane.getID()))
    links = tuple(
        SignalLink(i, *movements[i][0], also=tuple(movements[i][1:]))
        if i in movements
        else SignalLink(i, "", "")
        for i in range(n)
    )
    conflicts, yields_to = _conflict_tables(n, junction_index)
    phases = phases_from_plan(plan)
    if not phases:
        return None
    yellow = [s.duration_s for s in plan if is_clearance(s.state)]
    all_red = [
        s.duration_s
        for s in plan
        if not is_clearance(s.state) and "G" not in s.state and "g" not in s.state
    ]
    return Intersection(
        id=tls.getID(),
        links=links,
        conflicts=conflicts,
        yields_to=yields_to,
        plan=plan,
        plan_offset_s=offset,
        phases=phases,
        yellow_s=max(yellow) if yellow else defaults.yellow_s,
        all_red_s=max(all_red) if all_red else defaults.all_red_s,
        transitions=transitions_from_plan(plan, phases),
    )


def _connection(in_lane: Any, out_lane: Any) -> Any:
    for conn in in_lane.getOutgoing():
        if conn.getToLane() is out_lane:
            return conn
    return None


def _conflict_tables(
    n: int, junction_index: list[tuple[int, Any, int]]
) -> tuple[tuple[frozenset[int], ...], tuple[frozenset[int], ...]]:
    """Conflicts between signal indices, from every movement they control."""
    conflicts: list[set[int]] = [set() for _ in range(n)]
    yields_to: list[set[int]] = [set() for _ in range(n)]
    for a, node_a, ja in junction_index:
        foes = node_a._foes.get(ja)
        response = node_a._prohibits.get(ja)
        if foes is None or ja < 0:
            continue
        for b, node_b, jb in junction_index:
            if a == b or node_b is not node_a or jb < 0 or jb >= len(foes):
                continue
            if foes[len(foes) - jb - 1] == "1":
                conflicts[a].add(b)
                conflicts[b].add(a)
            if response is not None and jb < len(response) and response[-jb - 1] == "1":
                yields_to[a].add(b)
    return tuple(frozenset(s) for s in conflicts), tuple(frozenset(s) for s in yields_to)


class NetGeometry:
    """Lane lengths and straight predecessors, read from a sumolib net."""

    def __init__(self, net: Any) -> None:
        self._net = net

    def length(self, lane: str) -> float:
        return float(self._net.getLane(lane).getLength())

    def predecessor(self, lane: str) -> str | None:
        here = self._net.getLane(lane)
        incoming = [p for p in here.getIncoming() if not p.getID().startswith(":")]
        if len(incoming) != 1:
            return None
        return str(incoming[0].getID())
