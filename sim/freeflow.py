"""Free-flow travel time of emergency vehicles: each one alone on the empty network.

The vehicle keeps its type, route and departure; every signal shows green on all its links
(alone, nothing conflicts), so the time is what the trip takes with nothing in the way.
Switching the signals off instead (``--tls.all-off``) would turn the junctions into
unsignalised ones where the vehicle slows down to look for foes: a free-flow time slower than
an uncontested trip through green lights.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from citybrain.errors import ScenarioError
from citybrain.sim.scenario import Scenario
from citybrain.sim.sumoargs import make_run_dirs, scenario_additionals
from citybrain.sim.sumoxml import iter_elements, parse_xml

_VEHICLES = ("vehicle", "trip")


def free_flow_times(scenario: Scenario, kinds: set[str], out_dir: Path) -> dict[str, float]:
    """Seconds each emergency vehicle (a vehicle or trip of a type in ``kinds``) takes alone."""
    shared: list[ET.Element] = []
    alone: list[ET.Element] = []
    for path in scenario.route_files:
        for elem in parse_xml(path).getroot():
            if elem.tag in ("vType", "route", "vTypeDistribution", "routeDistribution"):
                shared.append(elem)
            elif elem.tag in _VEHICLES and elem.get("type") in kinds:
                alone.append(elem)
    work = out_dir / "freeflow"
    times: dict[str, float] = {}
    greens = work / "all-green.add.xml"
    for k, vehicle in enumerate(alone):
        work.mkdir(parents=True, exist_ok=True)
        if not greens.exists():
            _write_all_green(scenario, greens)
        routes = ET.Element("routes")
        routes.extend(shared)
        routes.append(vehicle)
        rou = work / f"{k}.rou.xml"
        ET.ElementTree(routes).write(rou, encoding="unicode")
        trip = work / f"{k}.tripinfo.xml"
        depart = vehicle.get("depart", "0")
        begin = float(depart) if depart.replace(".", "", 1).isdigit() else scenario.begin_s
        _run_alone(scenario, rou, trip, begin, greens)
        for elem in ET.parse(trip).getroot().iter("tripinfo"):
            if float(elem.get("arrival", "-1")) >= 0:
                times[elem.get("id", "")] = float(elem.get("duration", "0"))
    return times


def _write_all_green(scenario: Scenario, path: Path) -> None:
    """A program per signal that shows every link green, switched on at once."""
    root = ET.Element("additional")
    for elem in iter_elements(scenario.net_file, frozenset({"tlLogic"})):
        phase = elem.find("phase")
        if phase is not None and elem.get("id"):
            logic = ET.SubElement(
                root,
                "tlLogic",
                {
                    "id": elem.get("id", ""),
                    "type": "static",
                    "programID": "freeflow",
                    "offset": "0",
                },
            )
            n = len(phase.get("state", ""))
            ET.SubElement(logic, "phase", {"duration": "86400", "state": "G" * n})
    ET.ElementTree(root).write(path, encoding="unicode")


def _run_alone(scenario: Scenario, rou: Path, trip: Path, begin: float, greens: Path) -> None:
    """The vehicle alone: the scenario's additional files (its vTypes, stops; WAUTs left
    out, outputs into the work folder), then the all-green programs, loaded last."""
    import sumolib

    work = greens.parent
    adds = [*scenario_additionals(scenario, work, drop_wauts=True), greens]
    make_run_dirs(work)
    done = subprocess.run(
        [
            sumolib.checkBinary("sumo"),
            "-n",
            str(scenario.net_file),
            "-r",
            str(rou),
            "--begin",
            f"{begin:g}",
            "--additional-files",
            ",".join(str(a) for a in adds),
            "--tripinfo-output",
            str(trip),
            "--no-step-log",
            "true",
            "--no-warnings",
            "true",
            "--step-length",
            f"{scenario.step_length_s:g}",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise ScenarioError(
            f"free-flow run of {rou.name} failed: {last[-1] if last else done.returncode}"
        )
