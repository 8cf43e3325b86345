"""Builds small SUMO scenarios shaped like published real-city ones, as test fixtures.

Each ``build_X(folder)`` writes one complete scenario into ``folder`` (created if missing)
with SUMO's own ``netconvert`` and hand-written route and additional files, and returns
the path of its ``.sumocfg``. Demand is deterministic (flows with a fixed ``period``) and
ends well before the window does, so every vehicle can arrive when nothing gridlocks.

The scenarios (tls ids in brackets):

* ``build_additional_program`` [center]: a 4-arm crossing, 2 lanes per approach (lane 0
  straight and right, lane 1 left only); the net has programID "0", an additional file
  adds programID "city" (90 s, protected lefts, 4 s yellow + 2 s all-red), loaded last.
* ``build_waut`` [center]: the same crossing with programs "day" (90 s) and "night"
  (60 s, permissive lefts) and a WAUT starting "day", switching to "night" at 450 s.
* ``build_gz`` [center]: gzipped net and routes; the routes hold an emergency vType and
  one ambulance.
* ``build_outputs`` [center]: a config with a log, verbose, statistics, a summary output,
  ``h:mm:ss`` times and the city's own E1/E2 detectors and edgeData.
* ``build_no_end`` [center]: a config with no ``<end>``.
* ``build_cluster`` [cluster1]: two nodes 20 m apart under one traffic light.
* ``build_crossing`` [center]: sidewalks, guessed pedestrian crossings, a bus lane on the
  main street, bike lanes on the side street, pedestrians, a bus line and bicycles.
"""

from __future__ import annotations

import gzip
import math
import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import sumolib

TLS_ID = "center"
CLUSTER_TLS_ID = "cluster1"
ARM_LENGTH = 200.0
MAIN_SPEED = 13.89
SIDE_SPEED = 11.11
WINDOW = (0, 900)
"""Begin and end (s) of every scenario with an end."""
DEMAND_END = 720
"""Flows stop here so the queues clear before the window ends."""
WAUT_SWITCH = 450
"""When the WAUT of ``build_waut`` switches from "day" to "night" (s after refTime 0)."""

YELLOW = 4
ALL_RED = 2

# Arms of the crossing: where each lies, and for traffic coming from it which arm is
# straight on, to the right and to the left.
ARMS: dict[str, tuple[float, float]] = {
    "west": (-ARM_LENGTH, 0.0),
    "east": (ARM_LENGTH, 0.0),
    "north": (0.0, ARM_LENGTH),
    "south": (0.0, -ARM_LENGTH),
}
MAIN_ARMS = ("west", "east")
SIDE_ARMS = ("north", "south")
TURNS: dict[str, dict[str, str]] = {
    "west": {"s": "east", "r": "south", "l": "north"},
    "east": {"s": "west", "r": "north", "l": "south"},
    "north": {"s": "south", "r": "west", "l": "east"},
    "south": {"s": "north", "r": "east", "l": "west"},
}
# Vehicles per hour per movement, from main-street and from side-street arms.
MAIN_RATES = {"s": 300, "r": 60, "l": 60}
SIDE_RATES = {"s": 150, "r": 40, "l": 40}

XSD = "http://sumo.dlr.de/xsd"
CAR_TYPE = (
    '<vType id="car" vClass="passenger" length="5.00" minGap="2.50" accel="2.6" decel="4.5"/>'
)


def sumo_env() -> dict[str, str]:
    """The environment to run SUMO's binaries in: SUMO_HOME set (so XML is validated)."""
    env = dict(os.environ)
    if not env.get("SUMO_HOME"):
        env["SUMO_HOME"] = str(Path(sumolib.checkBinary("sumo")).resolve().parent.parent)
    return env


def _netconvert(folder: Path, *args: str) -> None:
    """Run netconvert in ``folder``; its own message if it fails."""
    done = subprocess.run(
        [sumolib.checkBinary("netconvert"), *args],
        cwd=folder,
        env=sumo_env(),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"netconvert failed in {folder}:\n{done.stderr}")


def _root(tag: str, xsd: str, body: Iterable[str]) -> str:
    lines = "".join(f"    {line}\n" for entry in body for line in entry.splitlines())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{tag} xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:noNamespaceSchemaLocation="{XSD}/{xsd}">\n{lines}</{tag}>\n'
    )


def _write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _config(
    folder: Path,
    name: str,
    *,
    net: str,
    routes: str,
    additional: Sequence[str] = (),
    begin: str | None = str(WINDOW[0]),
    end: str | None = str(WINDOW[1]),
    extra: Sequence[str] = (),
) -> Path:
    """Write ``NAME.sumocfg`` with relative file names; ``extra`` are whole sections."""
    inputs = [f'<net-file value="{net}"/>', f'<route-files value="{routes}"/>']
    if additional:
        inputs.append(f'<additional-files value="{",".join(additional)}"/>')
    time = [f'<{key} value="{value}"/>' for key, value in (("begin", begin), ("end", end)) if value]
    body = ["<input>", *(f"    {x}" for x in inputs), "</input>"]
    if time:
        body += ["<time>", *(f"    {x}" for x in time), "</time>"]
    body += list(extra)
    return _write(folder / f"{name}.sumocfg", _root("configuration", "sumoConfiguration.xsd", body))


# --- the 4-arm crossing -------------------------------------------------------------


def _crossing_nodes(tls_id: str = TLS_ID) -> str:
    nodes = [f'<node id="{tls_id}" x="0.00" y="0.00" type="traffic_light"/>']
    nodes += [f'<node id="{arm}" x="{x:.2f}" y="{y:.2f}"/>' for arm, (x, y) in ARMS.items()]
    return _root("nodes", "nodes_file.xsd", nodes)


def _crossing_edges(lanes: Mapping[str, tuple[str, str]], center: str = TLS_ID) -> str:
    """Edges ARM_in / ARM_out of every arm; ``lanes[arm]`` is (lane attributes of the
    edges, their ``<lane>`` children or "")."""
    edges = []
    for arm in ARMS:
        main = arm in MAIN_ARMS
        attrs, children = lanes[arm]
        common = (
            f'priority="{3 if main else 2}" speed="{MAIN_SPEED if main else SIDE_SPEED}" {attrs}'
        )
        close = f">{children}</edge>" if children else "/>"
        edges.append(f'<edge id="{arm}_in" from="{arm}" to="{center}" {common}{close}')
        edges.append(f'<edge id="{arm}_out" from="{center}" to="{arm}" {common}{close}')
    return _root("edges", "edges_file.xsd", edges)


def _turn_lane_connections() -> str:
    """Lane 0 goes straight and right, lane 1 turns left (into the far lane)."""
    cons = []
    for arm, turns in TURNS.items():
        cons.append(f'<connection from="{arm}_in" to="{turns["s"]}_out" fromLane="0" toLane="0"/>')
        cons.append(f'<connection from="{arm}_in" to="{turns["r"]}_out" fromLane="0" toLane="0"/>')
        cons.append(f'<connection from="{arm}_in" to="{turns["l"]}_out" fromLane="1" toLane="1"/>')
    return _root("connections", "connections_file.xsd", cons)


def _build_crossing_net(folder: Path, name: str, out: str | None = None) -> str:
    """The 2-lane crossing (dedicated left-turn lanes) as NAME.net.xml (or ``out``)."""
    _write(folder / f"{name}.nod.xml", _crossing_nodes())
    _write(folder / f"{name}.edg.xml", _crossing_edges(dict.fromkeys(ARMS, ('numLanes="2"', ""))))
    _write(folder / f"{name}.con.xml", _turn_lane_connections())
    net = out or f"{name}.net.xml"
    _netconvert(
        folder,
        "--node-files", f"{name}.nod.xml",
        "--edge-files", f"{name}.edg.xml",
        "--connection-files", f"{name}.con.xml",
        "--no-turnarounds", "true",
        "--output-file", net,
    )  # fmt: skip
    return net


def _routes() -> list[str]:
    """One route per movement of the crossing, id ARM_TURN (e.g. west_l)."""
    return [
        f'<route id="{arm}_{turn}" edges="{arm}_in {to}_out"/>'
        for arm, turns in TURNS.items()
        for turn, to in turns.items()
    ]


def _flows(end: int = DEMAND_END) -> list[str]:
    """Cars on every movement of the crossing at MAIN_RATES / SIDE_RATES, evenly spaced."""
    flows = []
    for arm in ARMS:
        rates = MAIN_RATES if arm in MAIN_ARMS else SIDE_RATES
        for turn, per_hour in rates.items():
            flows.append(
                f'<flow id="f_{arm}_{turn}" type="car" route="{arm}_{turn}" begin="0" '
                f'end="{end}" period="{3600 / per_hour:.2f}" departLane="best" departSpeed="max"/>'
            )
    return flows


def crossing_links(net_file: Path, tls_id: str = TLS_ID) -> dict[int, tuple[str, str]]:
    """Link index of ``tls_id`` -> (arm the link comes from, its direction s/r/l)."""
    links: dict[int, tuple[str, str]] = {}
    root = ET.parse(net_file).getroot()
    for con in root.iter("connection"):
        if con.get("tl") == tls_id:
            arm = con.get("from", "").removesuffix("_in")
            links[int(con.get("linkIndex", "-1"))] = (arm, con.get("dir", "").lower())
    return links


Stage = tuple[int, Sequence[str], Sequence[str], str]
"""A green stage: (green s, arms, protected directions, permissive directions)."""


def _program(
    links: Mapping[int, tuple[str, str]], tls_id: str, program_id: str, stages: Sequence[Stage]
) -> str:
    """A static ``<tlLogic>``: each stage's green, then YELLOW s yellow, then ALL_RED s red."""
    n = max(links) + 1

    def state(major: str, minor: str, stage: Stage) -> str:
        _, arms, protected, permissive = stage
        chars = []
        for i in range(n):
            arm, direction = links.get(i, ("", ""))
            if arm in arms and direction and direction in protected:
                chars.append(major)
            elif arm in arms and direction and direction in permissive:
                chars.append(minor)
            else:
                chars.append("r")
        return "".join(chars)

    phases = []
    for stage in stages:
        phases.append(f'    <phase duration="{stage[0]}" state="{state("G", "g", stage)}"/>')
        phases.append(f'    <phase duration="{YELLOW}" state="{state("y", "y", stage)}"/>')
        phases.append(f'    <phase duration="{ALL_RED}" state="{"r" * n}"/>')
    return "\n".join(
        [
            f'<tlLogic id="{tls_id}" type="static" programID="{program_id}" offset="0">',
            *phases,
            "</tlLogic>",
        ]
    )


# 90 s: long main-street green, then protected lefts on each street.
CITY_STAGES: tuple[Stage, ...] = (
    (36, MAIN_ARMS, "sr", ""),
    (8, MAIN_ARMS, "l", ""),
    (16, SIDE_ARMS, "sr", ""),
    (6, SIDE_ARMS, "l", ""),
)
# 60 s: two stages, lefts give way to oncoming traffic.
NIGHT_STAGES: tuple[Stage, ...] = (
    (28, MAIN_ARMS, "sr", "l"),
    (20, SIDE_ARMS, "sr", "l"),
)


def _crossing_with_programs(
    folder: Path, name: str, add_name: str, body: Callable[[dict[int, tuple[str, str]]], list[str]]
) -> Path:
    """The crossing with the standard demand and an additional file of programs, whose
    elements ``body`` writes from the net's signal links."""
    folder.mkdir(parents=True, exist_ok=True)
    net = _build_crossing_net(folder, name)
    _write(folder / f"{name}.rou.xml", _root("routes", "routes_file.xsd", [
        CAR_TYPE, *_routes(), *_flows()
    ]))  # fmt: skip
    links = crossing_links(folder / net)
    _write(folder / add_name, _root("additional", "additional_file.xsd", body(links)))
    return _config(folder, name, net=net, routes=f"{name}.rou.xml", additional=[add_name])


def build_additional_program(folder: Path) -> Path:
    """Crossing whose additional file loads programID "city" for tls "center" after "0"."""
    return _crossing_with_programs(
        folder,
        "addprog",
        "city_program.add.xml",
        lambda links: [_program(links, TLS_ID, "city", CITY_STAGES)],
    )


def build_waut(folder: Path) -> Path:
    """Crossing with programs "day" and "night" and a WAUT switching at WAUT_SWITCH s."""
    return _crossing_with_programs(
        folder,
        "waut",
        "programs.add.xml",
        lambda links: [
            _program(links, TLS_ID, "day", CITY_STAGES),
            _program(links, TLS_ID, "night", NIGHT_STAGES),
            '<WAUT refTime="0" id="daynight" startProg="day">',
            f'    <wautSwitch time="{WAUT_SWITCH}" to="night"/>',
            "</WAUT>",
            f'<wautJunction wautID="daynight" junctionID="{TLS_ID}"/>',
        ],
    )


EMERGENCY_VTYPE = "ambulance"
EMERGENCY_VEHICLE = "ambulance_1"


def build_gz(folder: Path) -> Path:
    """Crossing with a gzipped net and gzipped routes holding one emergency vehicle."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "gz"
    net = _build_crossing_net(folder, name, out=f"{name}.net.xml.gz")
    routes = [
        CAR_TYPE,
        f'<vType id="{EMERGENCY_VTYPE}" vClass="emergency" guiShape="emergency" '
        'speedFactor="1.3" length="6.50"/>',
        *_routes(),
        *_flows(),
        f'<vehicle id="{EMERGENCY_VEHICLE}" type="{EMERGENCY_VTYPE}" route="west_s" depart="300" '
        'departLane="best" departSpeed="max"/>',
    ]
    _write(folder / f"{name}.rou.xml.gz", _root("routes", "routes_file.xsd", routes))
    return _config(folder, name, net=net, routes=f"{name}.rou.xml.gz")


def _seconds_hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _detectors(net: sumolib.net.Net) -> list[str]:
    """Per incoming lane of the crossing: an E1 5 m before its end, an E2 over its last 40 m."""
    dets = []
    for arm in ARMS:
        for lane in net.getEdge(f"{arm}_in").getLanes():
            lane_id = lane.getID()
            end = math.floor(lane.getLength() * 100) / 100
            dets.append(
                f'<inductionLoop id="city_e1_{lane_id}" lane="{lane_id}" pos="{end - 5:.2f}" '
                'period="60" file="det_e1.xml"/>'
            )
            dets.append(
                f'<laneAreaDetector id="city_e2_{lane_id}" lane="{lane_id}" '
                f'pos="{max(0.0, end - 40):.2f}" endPos="{end:.2f}" period="60" file="det_e2.xml"/>'
            )
    return dets


def build_outputs(folder: Path) -> Path:
    """Crossing configured as authors leave it: log, verbose, summary, detectors, h:mm:ss."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "outputs"
    net = _build_crossing_net(folder, name)
    _write(folder / f"{name}.rou.xml", _root("routes", "routes_file.xsd", [
        CAR_TYPE, *_routes(), *_flows()
    ]))  # fmt: skip
    dets = _detectors(sumolib.net.readNet(str(folder / net)))
    _write(
        folder / "city_detectors.add.xml",
        _root("additional", "additional_file.xsd", [
            *dets, '<edgeData id="ed" file="edgedata.xml"/>'
        ]),
    )  # fmt: skip
    extra = [
        "<output>",
        '    <summary-output value="summary.xml"/>',
        "</output>",
        "<report>",
        '    <verbose value="true"/>',
        '    <log value="sim.log.txt"/>',
        '    <duration-log.statistics value="true"/>',
        "</report>",
    ]
    return _config(
        folder,
        name,
        net=net,
        routes=f"{name}.rou.xml",
        additional=["city_detectors.add.xml"],
        begin=_seconds_hms(WINDOW[0]),
        end=_seconds_hms(WINDOW[1]),
        extra=extra,
    )


NO_END_DEMAND_END = 600


def build_no_end(folder: Path) -> Path:
    """Crossing whose config has a begin but no ``<end>``; flows stop at 600 s."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "noend"
    net = _build_crossing_net(folder, name)
    _write(folder / f"{name}.rou.xml", _root("routes", "routes_file.xsd", [
        CAR_TYPE, *_routes(), *_flows(end=NO_END_DEMAND_END)
    ]))  # fmt: skip
    return _config(folder, name, net=net, routes=f"{name}.rou.xml", end=None)


# --- two nodes, one traffic light -----------------------------------------------------

CLUSTER_NODES = ("cl_west", "cl_east")
CLUSTER_GAP = 20.0


def build_cluster(folder: Path) -> Path:
    """Main street through two nodes 20 m apart (a side street north at the first, south at
    the second), both ``type="traffic_light" tl="cluster1"``: one program for both."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "cluster"
    a, b = CLUSTER_NODES
    gap = CLUSTER_GAP
    nodes = [
        f'<node id="{a}" x="0.00" y="0.00" type="traffic_light" tl="{CLUSTER_TLS_ID}"/>',
        f'<node id="{b}" x="{gap:.2f}" y="0.00" type="traffic_light" tl="{CLUSTER_TLS_ID}"/>',
        f'<node id="west" x="{-ARM_LENGTH:.2f}" y="0.00"/>',
        f'<node id="east" x="{gap + ARM_LENGTH:.2f}" y="0.00"/>',
        f'<node id="north" x="0.00" y="{ARM_LENGTH:.2f}"/>',
        f'<node id="south" x="{gap:.2f}" y="{-ARM_LENGTH:.2f}"/>',
    ]
    main = f'priority="3" speed="{MAIN_SPEED}" numLanes="2"'
    side = f'priority="2" speed="{SIDE_SPEED}" numLanes="1"'
    edges = [
        f'<edge id="west_in" from="west" to="{a}" {main}/>',
        f'<edge id="west_out" from="{a}" to="west" {main}/>',
        f'<edge id="mid_eb" from="{a}" to="{b}" {main}/>',
        f'<edge id="mid_wb" from="{b}" to="{a}" {main}/>',
        f'<edge id="east_in" from="east" to="{b}" {main}/>',
        f'<edge id="east_out" from="{b}" to="east" {main}/>',
        f'<edge id="north_in" from="north" to="{a}" {side}/>',
        f'<edge id="north_out" from="{a}" to="north" {side}/>',
        f'<edge id="south_in" from="south" to="{b}" {side}/>',
        f'<edge id="south_out" from="{b}" to="south" {side}/>',
    ]
    _write(folder / f"{name}.nod.xml", _root("nodes", "nodes_file.xsd", nodes))
    _write(folder / f"{name}.edg.xml", _root("edges", "edges_file.xsd", edges))
    _netconvert(
        folder,
        "--node-files", f"{name}.nod.xml",
        "--edge-files", f"{name}.edg.xml",
        "--no-turnarounds", "true",
        "--output-file", f"{name}.net.xml",
    )  # fmt: skip
    routes = {
        "we": "west_in mid_eb east_out",
        "ew": "east_in mid_wb west_out",
        "wn": "west_in north_out",
        "nw": "north_in west_out",
        "ne": "north_in mid_eb east_out",
        "ns": "north_in mid_eb south_out",
        "es": "east_in south_out",
        "se": "south_in east_out",
        "sw": "south_in mid_wb west_out",
        "sn": "south_in mid_wb north_out",
        "ws": "west_in mid_eb south_out",
        "en": "east_in mid_wb north_out",
    }
    per_hour = {"we": 360, "ew": 360, "wn": 60, "nw": 60, "ne": 40, "ns": 40}
    per_hour |= {"es": 60, "se": 60, "sw": 40, "sn": 40, "ws": 40, "en": 40}
    body = [CAR_TYPE]
    body += [f'<route id="{rid}" edges="{edges}"/>' for rid, edges in routes.items()]
    body += [
        f'<flow id="f_{rid}" type="car" route="{rid}" begin="0" end="{DEMAND_END}" '
        f'period="{3600 / rate:.2f}" departLane="best" departSpeed="max"/>'
        for rid, rate in per_hour.items()
    ]
    _write(folder / f"{name}.rou.xml", _root("routes", "routes_file.xsd", body))
    return _config(folder, name, net=f"{name}.net.xml", routes=f"{name}.rou.xml")


# --- crossing with sidewalks, pedestrian crossings, a bus lane and bike lanes --------------

PERSON_COUNT = 40
PERSON_EVERY = 15
BUS_EVERY = 120
BIKE_EVERY = 60


def build_crossing(folder: Path) -> Path:
    """Crossing with sidewalks (lane 0), guessed pedestrian crossings, a bus lane (lane 1) on
    the main street, bike lanes (lane 1) on the side street, and people walking across."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "pedcross"
    main = ('numLanes="2" sidewalkWidth="2.00"', '<lane index="0" allow="bus"/>')
    side = ('numLanes="1" sidewalkWidth="2.00" bikeLaneWidth="1.50"', "")
    lanes = {arm: main if arm in MAIN_ARMS else side for arm in ARMS}
    _write(folder / f"{name}.nod.xml", _crossing_nodes())
    _write(folder / f"{name}.edg.xml", _crossing_edges(lanes))
    _netconvert(
        folder,
        "--node-files", f"{name}.nod.xml",
        "--edge-files", f"{name}.edg.xml",
        "--crossings.guess", "true",
        "--no-turnarounds", "true",
        "--output-file", f"{name}.net.xml",
    )  # fmt: skip
    head = [
        CAR_TYPE,
        '<vType id="bus" vClass="bus" length="12.00" accel="1.2" decel="4.0"/>',
        '<vType id="bike" vClass="bicycle"/>',
        *_routes(),
    ]
    rates = {"s": 240, "r": 60, "l": 40}
    timed: list[tuple[int, str]] = [
        (
            0,
            f'<flow id="f_{arm}_{turn}" type="car" route="{arm}_{turn}" begin="0" '
            f'end="{DEMAND_END}" period="{3600 / (rate if arm in MAIN_ARMS else rate / 2):.2f}" '
            'departLane="best" departSpeed="max"/>',
        )
        for arm in ARMS
        for turn, rate in rates.items()
    ]
    timed += [
        (
            i * 30,
            f'<flow id="bus_{arm}" type="bus" route="{arm}_s" begin="{i * 30}" '
            f'end="{DEMAND_END}" period="{BUS_EVERY}" departLane="best"/>',
        )
        for i, arm in enumerate(MAIN_ARMS)
    ]
    timed += [
        (
            i * 20,
            f'<flow id="bike_{arm}" type="bike" route="{arm}_s" begin="{i * 20}" '
            f'end="{DEMAND_END}" period="{BIKE_EVERY}" departLane="best"/>',
        )
        for i, arm in enumerate(SIDE_ARMS)
    ]
    arms = list(ARMS)
    for k in range(PERSON_COUNT):
        # Even ones cross the road they came along, odd ones go straight on or turn left.
        start = arms[k % 4]
        goal = TURNS[start]["s" if k % 3 else "l"] if k % 2 else start
        depart = k * PERSON_EVERY + 5
        timed.append(
            (
                depart,
                f'<person id="ped_{k}" depart="{depart}" departPos="20">'
                f'<walk from="{start}_in" to="{goal}_out" arrivalPos="30"/></person>',
            )
        )
    # SUMO drops what departs before something read earlier: sort by time.
    timed.sort(key=lambda item: item[0])
    _write(
        folder / f"{name}.rou.xml",
        _root("routes", "routes_file.xsd", [*head, *(text for _, text in timed)]),
    )
    return _config(folder, name, net=f"{name}.net.xml", routes=f"{name}.rou.xml")


BUILDERS = {
    "additional_program": build_additional_program,
    "waut": build_waut,
    "gz": build_gz,
    "outputs": build_outputs,
    "no_end": build_no_end,
    "cluster": build_cluster,
    "crossing": build_crossing,
}
