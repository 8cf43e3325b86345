"""The built-in scenario library: TOML specs, nets from netgenerate, and time-varying demand.

A scenario is one TOML file under ``configs/scenarios/`` with a ``[net]`` table (the
parameters of a signalized grid built by SUMO's ``netgenerate``) and a ``[demand]`` table
(the parameters of our own peak-shaped demand generator). ``build_scenario`` turns a spec
into ``NAME.net.xml``, ``NAME.rou.xml`` and ``NAME.sumocfg``.

Demand model: every entry edge at the fringe of the net gets a rate that follows a peak
profile over the window (a raised cosine from ``offpeak_fraction`` of the peak at the ends
to the full peak in the middle), held constant over slices of ``slice_s`` seconds and
jittered per slice by up to ``rate_noise`` (the generator's only randomness, drawn from
``seed``). Entries on the main road (``main_axis``) run at ``peak_veh_per_h``, the others at
``side_factor`` times that. Each entry's traffic is split into straight, left and right
movements by heading; a left or right share is spread evenly over the exits with that heading.
Flows give ``from``/``to`` edges only, so SUMO routes them, and use ``probability`` (one
Bernoulli draw per second), so the arrival times themselves come from SUMO's own ``--seed``.
"""

from __future__ import annotations

import importlib.resources
import math
import random
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import sumolib

from citybrain.errors import ConfigError, ScenarioError
from citybrain.tomlfile import parse_toml

SCENARIOS: tuple[str, ...] = ("single", "arterial", "grid")

Heading = Literal["E", "N", "W", "S"]
_LEFT_OF: dict[Heading, Heading] = {"E": "N", "N": "W", "W": "S", "S": "E"}
_RIGHT_OF: dict[Heading, Heading] = {"E": "S", "S": "W", "W": "N", "N": "E"}

PASSENGER_TYPE = "passenger"
EMERGENCY_TYPE = "emergency"

T = TypeVar("T")


@dataclass(frozen=True)
class NetSpec:
    """Parameters of a signalized grid built by ``netgenerate --grid``."""

    x_number: int
    y_number: int
    x_length: float
    y_length: float
    attach_length: float
    lanes: int
    speed_kmh: float
    turn_lanes: int
    turn_lane_length: float
    cycle_s: int
    yellow_s: int
    left_green_s: int

    @property
    def signal_count(self) -> int:
        """How many signalized intersections the net has."""
        return self.x_number * self.y_number


@dataclass(frozen=True)
class EmergencySpec:
    """One emergency vehicle. It has no blue-light device: it obeys the signals."""

    id: str
    depart: float
    from_edge: str | None
    to_edge: str | None
    along_main: bool


@dataclass(frozen=True)
class DemandSpec:
    """Parameters of the peak-shaped demand generator."""

    window_s: int
    slice_s: int
    peak_veh_per_h: float
    side_factor: float
    offpeak_fraction: float
    turn_left: float
    turn_right: float
    rate_noise: float
    main_axis: Literal["x", "y"] | None
    emergency: tuple[EmergencySpec, ...]


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario: its name, where it was read from, its net and its demand."""

    name: str
    description: str
    source: str
    net: NetSpec
    demand: DemandSpec


# --------------------------------------------------------------------------- loading


def load_spec(name_or_path: str | Path) -> ScenarioSpec:
    """Load a packaged scenario by name, or a scenario TOML file by path."""
    if isinstance(name_or_path, str) and name_or_path in SCENARIOS:
        resource = importlib.resources.files("citybrain.configs") / "scenarios"
        text = (resource / f"{name_or_path}.toml").read_text(encoding="utf-8")
        return _parse(text, f"configs/scenarios/{name_or_path}.toml", name_or_path)
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        raise ConfigError(
            f"unknown scenario {str(name_or_path)!r}; available: {', '.join(SCENARIOS)}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read scenario file ({exc.strerror})") from exc
    return _parse(text, str(path), path.stem)


def _parse(text: str, source: str, default_name: str) -> ScenarioSpec:
    top = _Table(source, "", parse_toml(text, source))
    top.only({"name", "description", "net", "demand"})
    net = _net_spec(top.table("net"))
    demand = _demand_spec(top.table("demand"))
    return ScenarioSpec(
        name=top.get("name", _file_stem, "letters, digits, '_', '-' or '.'", default_name),
        description=top.get("description", _any_text, "a string", ""),
        source=source,
        net=net,
        demand=demand,
    )


def _net_spec(t: _Table) -> NetSpec:
    t.only(set(NetSpec.__dataclass_fields__))
    x_length = t.get("x_length", _pos_float, "a positive number")
    return NetSpec(
        x_number=t.get("x_number", _pos_int, "a positive integer"),
        y_number=t.get("y_number", _pos_int, "a positive integer"),
        x_length=x_length,
        y_length=t.get("y_length", _pos_float, "a positive number", x_length),
        attach_length=t.get("attach_length", _pos_float, "a positive number"),
        lanes=t.get("lanes", _pos_int, "a positive integer"),
        speed_kmh=t.get("speed_kmh", _pos_float, "a positive number"),
        turn_lanes=t.get("turn_lanes", _nonneg_int, "a non-negative integer", 0),
        turn_lane_length=t.get("turn_lane_length", _pos_float, "a positive number", 50.0),
        cycle_s=t.get("cycle_s", _pos_int, "a positive integer", 90),
        yellow_s=t.get("yellow_s", _pos_int, "a positive integer", 3),
        left_green_s=t.get("left_green_s", _nonneg_int, "a non-negative integer", 0),
    )


def _demand_spec(t: _Table) -> DemandSpec:
    t.only(set(DemandSpec.__dataclass_fields__))
    window_s = t.get("window_s", _pos_int, "a positive integer", 3600)
    slice_s = t.get("slice_s", _pos_int, "a positive integer", 600)
    if slice_s > window_s:
        t.fail("slice_s", f"must not exceed demand.window_s ({window_s})")
    turn_left = t.get("turn_left", _fraction, "a number from 0 to 1", 0.1)
    turn_right = t.get("turn_right", _fraction, "a number from 0 to 1", 0.1)
    if turn_left + turn_right > 1.0:
        t.fail("turn_right", "plus demand.turn_left must not exceed 1")
    offpeak = t.get("offpeak_fraction", _fraction, "a number from 0 to 1", 0.5)
    if offpeak <= 0.0:
        t.fail("offpeak_fraction", "must be a number above 0 and at most 1")
    main_axis: Literal["x", "y"] | None = None
    if "main_axis" in t.data:
        main_axis = t.get("main_axis", _axis, 'either "x" or "y"')
    emergency = tuple(
        _emergency_spec(e, i, window_s, main_axis) for i, e in enumerate(t.tables("emergency"))
    )
    return DemandSpec(
        window_s=window_s,
        slice_s=slice_s,
        peak_veh_per_h=t.get("peak_veh_per_h", _pos_float, "a positive number"),
        side_factor=t.get("side_factor", _pos_float, "a positive number", 1.0),
        offpeak_fraction=offpeak,
        turn_left=turn_left,
        turn_right=turn_right,
        rate_noise=t.get("rate_noise", _unit_open, "a number from 0 to below 1", 0.0),
        main_axis=main_axis,
        emergency=emergency,
    )


def _emergency_spec(
    t: _Table, index: int, window_s: int, main_axis: Literal["x", "y"] | None
) -> EmergencySpec:
    t.only({"id", "depart", "route", "from", "to"})
    depart = t.get("depart", _nonneg_float, "a non-negative number")
    if depart >= window_s:
        t.fail("depart", f"must be before the end of the window ({window_s} s)")
    route = t.get("route", _main, 'the string "main"', "")
    from_edge = t.get("from", _text, "an edge id", "")
    to_edge = t.get("to", _text, "an edge id", "")
    if route:
        if from_edge or to_edge:
            t.fail("route", 'cannot be given together with "from"/"to"')
        if main_axis is None:
            t.fail("route", '= "main" needs demand.main_axis')
    elif not (from_edge and to_edge):
        t.fail("from", 'and "to" are both needed unless route = "main"')
    return EmergencySpec(
        id=t.get("id", _text, "a non-empty string", f"emergency{index}"),
        depart=depart,
        from_edge=from_edge or None,
        to_edge=to_edge or None,
        along_main=bool(route),
    )


@dataclass(frozen=True)
class _Table:
    """A TOML table and the dotted key prefix it sits under, for error messages."""

    source: str
    prefix: str
    data: Mapping[str, Any]

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {self.prefix}{key} {problem}")

    def only(self, allowed: set[str]) -> None:
        for key in sorted(set(self.data) - allowed):
            self.fail(key, "is not a known key")

    def get(
        self, key: str, convert: Callable[[Any], T | None], want: str, default: T | None = None
    ) -> T:
        if key not in self.data:
            if default is None:
                self.fail(key, f"is missing (it must be {want})")
            return default
        value = convert(self.data[key])
        if value is None:
            self.fail(key, f"must be {want}")
        return value

    def table(self, key: str) -> _Table:
        value = self.get(key, _mapping, "a table")
        return _Table(self.source, f"{self.prefix}{key}.", value)

    def tables(self, key: str) -> list[_Table]:
        empty: list[Mapping[str, Any]] = []
        items = self.get(key, _mapping_list, "an array of tables", empty)
        return [_Table(self.source, f"{self.prefix}{key}[{i}].", d) for i, d in enumerate(items)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pos_int(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if ok else None


def _nonneg_int(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _pos_float(value: Any) -> float | None:
    return float(value) if _is_number(value) and value > 0 else None


def _nonneg_float(value: Any) -> float | None:
    return float(value) if _is_number(value) and value >= 0 else None


def _fraction(value: Any) -> float | None:
    return float(value) if _is_number(value) and 0 <= value <= 1 else None


def _unit_open(value: Any) -> float | None:
    return float(value) if _is_number(value) and 0 <= value < 1 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _file_stem(value: Any) -> str | None:
    ok = isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", value) is not None
    return value if ok else None


def _any_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _axis(value: Any) -> Literal["x", "y"] | None:
    if value == "x":
        return "x"
    if value == "y":
        return "y"
    return None


def _main(value: Any) -> str | None:
    return value if value == "main" else None


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


def _mapping_list(value: Any) -> list[Mapping[str, Any]] | None:
    ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
    return value if ok else None


# --------------------------------------------------------------------------- building


def build_scenario(spec: ScenarioSpec, out_dir: Path, seed: int = 1) -> Path:
    """Write NAME.net.xml, NAME.rou.xml and NAME.sumocfg into out_dir; return the sumocfg."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net_path = out_dir / f"{spec.name}.net.xml"
    rou_path = out_dir / f"{spec.name}.rou.xml"
    cfg_path = out_dir / f"{spec.name}.sumocfg"
    _run_netgenerate(_netgenerate_args(spec.net, net_path))
    net = sumolib.net.readNet(str(net_path))
    _write_xml(_routes(spec, net, seed), rou_path)
    _write_xml(_sumocfg(net_path.name, rou_path.name, spec.demand.window_s), cfg_path)
    return cfg_path


def _netgenerate_args(net: NetSpec, out: Path) -> list[str]:
    args = {
        "grid.x-number": net.x_number,
        "grid.y-number": net.y_number,
        "grid.x-length": net.x_length,
        "grid.y-length": net.y_length,
        "grid.attach-length": net.attach_length,
        "default.lanenumber": net.lanes,
        "default.speed": round(net.speed_kmh / 3.6, 3),
        "default.junctions.type": "traffic_light",
        "turn-lanes": net.turn_lanes,
        "turn-lanes.length": net.turn_lane_length,
        "tls.cycle.time": net.cycle_s,
        "tls.yellow.time": net.yellow_s,
        "tls.left-green.time": net.left_green_s,
        "output-file": out,
    }
    cmd = ["--grid", "--no-turnarounds"]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _run_netgenerate(args: list[str]) -> None:
    try:
        binary = sumolib.checkBinary("netgenerate")
        result = subprocess.run(
            [binary, *args], capture_output=True, text=True, check=False, timeout=120
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ScenarioError(f"cannot run netgenerate: {exc}") from exc
    if result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        raise ScenarioError(f"netgenerate failed (exit {result.returncode}): {detail}")


def _sumocfg(net_file: str, route_file: str, end_s: int) -> ET.Element:
    root = ET.Element("configuration")
    inputs = ET.SubElement(root, "input")
    ET.SubElement(inputs, "net-file", value=net_file)
    ET.SubElement(inputs, "route-files", value=route_file)
    time = ET.SubElement(root, "time")
    ET.SubElement(time, "begin", value="0")
    ET.SubElement(time, "end", value=str(end_s))
    return root


def _write_xml(root: ET.Element, path: Path) -> None:
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n', encoding="utf-8")


# --------------------------------------------------------------------------- demand


@dataclass(frozen=True)
class FringeEdge:
    """A fringe edge: where traffic enters or leaves the net, and which way it points."""

    edge: str
    heading: Heading
    lateral: float  # y for east/west edges, x for north/south edges


def _heading(dx: float, dy: float) -> Heading:
    if abs(dx) >= abs(dy):
        return "E" if dx > 0 else "W"
    return "N" if dy > 0 else "S"


def _port(edge: Any, at_end: bool) -> FringeEdge:
    fx, fy = edge.getFromNode().getCoord()[:2]
    tx, ty = edge.getToNode().getCoord()[:2]
    heading = _heading(tx - fx, ty - fy)
    x, y = (tx, ty) if at_end else (fx, fy)
    return FringeEdge(edge.getID(), heading, round(y if heading in "EW" else x, 1))


def fringe_ports(net: Any) -> tuple[tuple[FringeEdge, ...], tuple[FringeEdge, ...]]:
    """The net's entry edges (nothing leads in) and exit edges (nothing leads out)."""
    edges = sorted(net.getEdges(), key=lambda e: e.getID())
    entries = tuple(_port(e, False) for e in edges if not e.getIncoming())
    exits = tuple(_port(e, True) for e in edges if not e.getOutgoing())
    return entries, exits


def _main_lateral(net: Any, axis: Literal["x", "y"]) -> float:
    """The x or y of the main road: the middle row (axis x) or column (axis y) of signals."""
    index = 1 if axis == "x" else 0
    signals = [n for n in net.getNodes() if n.getType() == "traffic_light"]
    values = sorted({round(n.getCoord()[index], 1) for n in signals})
    if not values:
        raise ScenarioError("the net has no signalized intersection")
    return float(values[(len(values) - 1) // 2])


def _is_main(port: FringeEdge, axis: Literal["x", "y"] | None, lateral: float) -> bool:
    if axis is None:
        return True
    on_axis = port.heading in ("EW" if axis == "x" else "NS")
    return on_axis and port.lateral == lateral


def _destinations(
    entry: FringeEdge, exits: tuple[FringeEdge, ...], d: DemandSpec
) -> list[tuple[str, float]]:
    """Exit edges of an entry with the share of its traffic that goes to each."""
    ahead = [x for x in exits if x.heading == entry.heading]
    straight = [x for x in ahead if x.lateral == entry.lateral] or ahead
    groups = [
        (straight, 1.0 - d.turn_left - d.turn_right),
        ([x for x in exits if x.heading == _LEFT_OF[entry.heading]], d.turn_left),
        ([x for x in exits if x.heading == _RIGHT_OF[entry.heading]], d.turn_right),
    ]
    groups = [(g, share) for g, share in groups if g and share > 0]
    total = sum(share for _, share in groups)
    return [(x.edge, share / total / len(g)) for g, share in groups for x in g]


def peak_level(t_s: float, d: DemandSpec) -> float:
    """The demand level at time t_s as a fraction of the peak (raised cosine over the window)."""
    bump = 0.5 * (1.0 - math.cos(2.0 * math.pi * t_s / d.window_s))
    return d.offpeak_fraction + (1.0 - d.offpeak_fraction) * bump


def _slices(d: DemandSpec) -> list[tuple[int, int]]:
    return [(b, min(b + d.slice_s, d.window_s)) for b in range(0, d.window_s, d.slice_s)]


def _flows(spec: ScenarioSpec, net: Any, seed: int) -> list[tuple[float, ET.Element]]:
    d = spec.demand
    entries, exits = fringe_ports(net)
    if not entries or not exits:
        raise ScenarioError(f"{spec.name}: the net has no fringe entry/exit edges")
    lateral = _main_lateral(net, d.main_axis) if d.main_axis else 0.0
    rng = random.Random(seed)
    flows: list[tuple[float, ET.Element]] = []
    for k, (begin, end) in enumerate(_slices(d)):
        level = peak_level((begin + end) / 2.0, d)
        for entry in entries:
            jitter = 1.0 + rng.uniform(-d.rate_noise, d.rate_noise)
            factor = 1.0 if _is_main(entry, d.main_axis, lateral) else d.side_factor
            rate = d.peak_veh_per_h * factor * level * jitter
            for exit_edge, share in _destinations(entry, exits, d):
                attrs = _flow_attrs(f"{entry.edge}__{exit_edge}__{k}", begin, end, rate * share)
                flows.append(
                    (
                        float(begin),
                        ET.Element("flow", attrs | {"from": entry.edge, "to": exit_edge}),
                    )
                )
    return flows


def _flow_attrs(flow_id: str, begin: int, end: int, veh_per_h: float) -> dict[str, str]:
    return {
        "id": flow_id,
        "type": PASSENGER_TYPE,
        "begin": str(begin),
        "end": str(end),
        "probability": f"{min(veh_per_h / 3600.0, 1.0):.6f}",
        "departLane": "best",
        "departSpeed": "max",
        "departPos": "base",
    }


def main_road(spec: ScenarioSpec, net: Any) -> tuple[str, str]:
    """The entry and exit edge of the main road, end to end (west→east or south→north)."""
    axis = spec.demand.main_axis
    if axis is None:
        raise ConfigError(f"{spec.source}: demand.main_axis is not set, so there is no main road")
    lateral = _main_lateral(net, axis)
    heading: Heading = "E" if axis == "x" else "N"
    entries, exits = fringe_ports(net)
    first = [p.edge for p in entries if p.heading == heading and p.lateral == lateral]
    last = [p.edge for p in exits if p.heading == heading and p.lateral == lateral]
    if not first or not last:
        raise ScenarioError(f"{spec.name}: cannot find the ends of the main road")
    return first[0], last[0]


def _emergency_trips(spec: ScenarioSpec, net: Any) -> list[tuple[float, ET.Element]]:
    trips: list[tuple[float, ET.Element]] = []
    for i, ev in enumerate(spec.demand.emergency):
        if ev.along_main:
            from_edge, to_edge = main_road(spec, net)
        else:
            from_edge, to_edge = str(ev.from_edge), str(ev.to_edge)
            for key, edge in (("from", from_edge), ("to", to_edge)):
                if not net.hasEdge(edge):
                    raise ConfigError(
                        f"{spec.source}: demand.emergency[{i}].{key} names edge {edge!r}, "
                        "which is not in the net"
                    )
        trips.append(
            (
                ev.depart,
                ET.Element(
                    "trip",
                    {
                        "id": ev.id,
                        "type": EMERGENCY_TYPE,
                        "depart": f"{ev.depart:.2f}",
                        "from": from_edge,
                        "to": to_edge,
                        "departLane": "best",
                        "departSpeed": "max",
                        "departPos": "base",
                    },
                ),
            )
        )
    return trips


def _vtypes(with_emergency: bool) -> list[ET.Element]:
    types = [
        ET.Element(
            "vType",
            {
                "id": PASSENGER_TYPE,
                "vClass": "passenger",
                "accel": "2.6",
                "decel": "4.5",
                "sigma": "0.5",
                "length": "5",
                "minGap": "2.5",
                "speedDev": "0.1",
            },
        )
    ]
    if with_emergency:
        types.append(
            ET.Element(
                "vType",
                {
                    "id": EMERGENCY_TYPE,
                    "vClass": "emergency",
                    "guiShape": "emergency",
                    "accel": "2.6",
                    "decel": "4.5",
                    "sigma": "0.5",
                    "length": "6.5",
                    "minGap": "2.5",
                    "speedFactor": "1",
                    "speedDev": "0",
                    "color": "1,0,0",
                },
            )
        )
    return types


def _routes(spec: ScenarioSpec, net: Any, seed: int) -> ET.Element:
    root = ET.Element("routes")
    root.append(ET.Comment(f" citybrain scenario {spec.name}: generated demand, seed {seed} "))
    root.extend(_vtypes(bool(spec.demand.emergency)))
    timed = _flows(spec, net, seed) + _emergency_trips(spec, net)
    timed.sort(key=lambda item: item[0])  # stable: flows keep their order within a slice
    root.extend(element for _, element in timed)
    return root
