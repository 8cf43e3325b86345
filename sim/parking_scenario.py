"""A SUMO scenario for validating parking settlement: a small grid with three parking lots.

``build_parking_scenario`` writes, into one folder:

* ``parking.net.xml``: a 3 x 3 grid from ``netgenerate`` (priority junctions, one lane per
  direction, 100 m entry roads at the fringe);
* ``parking.add.xml``: one ``<parkingArea>`` per lot, named after the lots of the tariff
  file (``L01``, ``L02``, ``L03`` of ``configs/tariffs.toml``), big enough that nobody
  waits for a space;
* ``parking.rou.xml``: our own demand. Every car is one SUMO vehicle: a trip from a fringe
  edge to a fringe edge with one to three ``<stop parkingArea=... duration=...>``, so SUMO
  routes it through its lots. Stays are drawn from classes (under the free period, under an
  hour, a few hours, a working day, overnight, more than 24 hours); a car may come back to a
  lot it left earlier that day (two sessions);
* ``parking.sumocfg`` (step length 1 s, stop output to ``stops.xml``), ``tariffs.toml``
  (a copy of the shipped tariffs) and ``cars.json``: every car's plate and how its plate
  gets bound to a payment account (before the first stay, only after all its stays, or
  never: debts).

Plates look like Chinese plates (``浙A·3K58Q``: province, city letter, five characters);
no two cars' plates differ only by OCR look-alikes, so a misread can never be another car.
Everything is drawn from ``seed``; simulation time 0 is ``start`` (a local time of the
lots' time zone), chosen so stays cross the tariff bands and midnight.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import sumolib

from citybrain.errors import ScenarioError
from citybrain.parking.plates import lookalike_key

NAME = "parking"
TIMEZONE = ZoneInfo("Asia/Shanghai")
# A Friday, 06:00 in Hangzhou: day and evening bands, two midnights, a Sunday morning.
DEFAULT_START = datetime(2026, 11, 20, 6, 0, tzinfo=TIMEZONE)
STEP_LENGTH_S = 1.0

# Lot id -> (edge, start position, end position) on the grid of ``_NETGENERATE``.
LOTS: dict[str, tuple[str, float, float]] = {
    "L01": ("A1B1", 40.0, 150.0),
    "L02": ("B2C2", 40.0, 150.0),
    "L03": ("C0C1", 40.0, 150.0),
}
LOT_CAPACITY = 80

ENTRY_EDGES = ("left0A0", "left1A1", "left2A2", "bottom0A0", "bottom1B0", "top1B2")
EXIT_EDGES = ("C0right0", "C1right1", "C2right2", "C2top2", "A2top0", "B0bottom1")

_NETGENERATE = [
    "--grid",
    "--grid.number", "3",
    "--grid.length", "200",
    "--grid.attach-length", "100",
    "--default.lanenumber", "1",
    "--default.speed", "13.89",
    "--default.junctions.type", "priority",
]  # fmt: skip

PROVINCES = "浙浙浙浙沪苏皖"
CITY_LETTERS = "ABCDEFGH"
# Chinese plates use digits and the Latin letters except I and O.
PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"

Binding = Literal["start", "later", "never"]

# Stay classes: (name, weight, shortest, longest) in seconds.
STAY_CLASSES: tuple[tuple[str, float, int, int], ...] = (
    ("free", 0.15, 3 * 60, 9 * 60),  # within every lot's free period (10 min at L03)
    ("short", 0.25, 12 * 60, 55 * 60),
    ("hours", 0.25, 70 * 60, 4 * 3600),
    ("workday", 0.15, 6 * 3600, 11 * 3600),
    ("overnight", 0.10, 13 * 3600, 20 * 3600),
    ("multiday", 0.10, 24 * 3600 + 20 * 60, 27 * 3600),
)
LAST_DEPARTURE_S = 14 * 3600  # the last car sets off by 20:00
MAX_CAR_TIME_S = 36 * 3600  # a car's stays together
GAP_BETWEEN_STAYS_S = 15 * 60  # at least: drive elsewhere before the next stay


@dataclass(frozen=True)
class PlannedStay:
    lot_id: str
    duration_s: int
    stay_class: str


@dataclass(frozen=True)
class Car:
    """One car: its SUMO vehicle, its plate and when its plate gets an account."""

    vehicle_id: str
    plate: str  # as printed on the plate, e.g. "浙A·3K58Q"
    account: str | None  # the account its plate is (eventually) bound to
    binding: Binding  # "start": before its first stay; "later": after all; "never"
    depart_s: int
    stays: tuple[PlannedStay, ...]


@dataclass(frozen=True)
class ParkingScenario:
    """What ``build_parking_scenario`` wrote."""

    folder: Path
    sumocfg: Path
    tariffs: Path
    stop_output: Path  # where SUMO writes its stop output (relative to the sumocfg)
    start: datetime  # the local time of simulation time 0
    cars: tuple[Car, ...]

    def plate_of(self) -> dict[str, str]:
        return {c.vehicle_id: c.plate for c in self.cars}


def build_parking_scenario(
    out_dir: Path,
    *,
    vehicles: int = 40,
    seed: int = 1,
    start: datetime = DEFAULT_START,
    tariffs: Path | None = None,
) -> ParkingScenario:
    """Write the scenario into ``out_dir`` (see the module docstring)."""
    if vehicles < 1:
        raise ScenarioError(f"the parking scenario needs at least one vehicle, not {vehicles}")
    if start.tzinfo is None:
        raise ScenarioError("the scenario's start time must carry a time zone")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = out / f"{NAME}.net.xml"
    _netgenerate(net)
    _check_net(net)
    cars = plan_cars(vehicles, seed)
    _write_xml(_additional(), out / f"{NAME}.add.xml")
    _write_xml(_routes(cars), out / f"{NAME}.rou.xml")
    end_s = max(_car_span(c) for c in cars) + 6 * 3600
    _write_xml(_sumocfg(end_s), out / f"{NAME}.sumocfg")
    tariff_path = out / "tariffs.toml"
    if tariffs is not None:
        shutil.copyfile(tariffs, tariff_path)
    else:
        shipped = resources.files("citybrain.configs").joinpath("tariffs.toml")
        tariff_path.write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    (out / "cars.json").write_text(
        json.dumps([asdict(c) for c in cars], ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return ParkingScenario(
        folder=out,
        sumocfg=out / f"{NAME}.sumocfg",
        tariffs=tariff_path,
        stop_output=out / "stops.xml",
        start=start,
        cars=cars,
    )


# --------------------------------------------------------------------------- cars


def make_plates(count: int, rng: random.Random) -> list[str]:
    """``count`` plates whose look-alike keys are all different."""
    plates: list[str] = []
    keys: set[str] = set()
    while len(plates) < count:
        tail = "".join(
            rng.choice(PLATE_LETTERS) if rng.random() < 0.25 else rng.choice("0123456789")
            for _ in range(5)
        )
        plate = f"{rng.choice(PROVINCES)}{rng.choice(CITY_LETTERS)}·{tail}"
        key = lookalike_key(plate)
        if key not in keys:
            keys.add(key)
            plates.append(plate)
    return plates


def _draw_class(rng: random.Random, forced: int | None) -> tuple[str, int]:
    if forced is not None:
        name, _, lo, hi = STAY_CLASSES[forced]
    else:
        weights = [c[1] for c in STAY_CLASSES]
        name, _, lo, hi = rng.choices(STAY_CLASSES, weights=weights)[0]
    return name, rng.randint(lo, hi)


def plan_cars(vehicles: int, seed: int) -> tuple[Car, ...]:
    """Cars, plates, bindings and stays, all from ``seed``.

    The first cars cover every stay class once, one car comes back to a lot it left, and
    the bindings cycle so small scenarios still have all three kinds.
    """
    rng = random.Random(seed)
    plates = make_plates(vehicles, rng)
    lots = sorted(LOTS)
    cars: list[Car] = []
    binding_cycle: tuple[Binding, ...] = ("start", "never", "later", "start", "start")
    for i in range(vehicles):
        stays: list[PlannedStay] = []
        if i < len(STAY_CLASSES):
            name, dur = _draw_class(rng, i)
            stays.append(PlannedStay(rng.choice(lots), dur, name))
        elif i == len(STAY_CLASSES):
            # Leaves a lot, parks elsewhere, comes back to the first lot: two sessions there.
            first, other = rng.sample(lots, 2)
            stays += [
                PlannedStay(first, rng.randint(20 * 60, 50 * 60), "short"),
                PlannedStay(other, rng.randint(12 * 60, 40 * 60), "short"),
                PlannedStay(first, rng.randint(70 * 60, 3 * 3600), "hours"),
            ]
        else:
            for _ in range(rng.choice((1, 1, 2, 3))):
                name, dur = _draw_class(rng, None)
                if stays and _total(stays) + dur + GAP_BETWEEN_STAYS_S > MAX_CAR_TIME_S:
                    break
                choices = [x for x in lots if not stays or x != stays[-1].lot_id]
                stays.append(PlannedStay(rng.choice(choices), dur, name))
        total = _total(stays)
        latest = max(0, min(LAST_DEPARTURE_S, MAX_CAR_TIME_S - total))
        if any(s.stay_class == "multiday" for s in stays):
            latest = min(latest, 4 * 3600)
        depart = rng.randint(0, latest)
        binding = binding_cycle[i % len(binding_cycle)]
        account = None if binding == "never" else f"acct-{i + 1:04d}"
        cars.append(Car(f"car{i + 1:03d}", plates[i], account, binding, depart, tuple(stays)))
    return tuple(cars)


def _total(stays: list[PlannedStay]) -> int:
    return sum(s.duration_s for s in stays) + GAP_BETWEEN_STAYS_S * (len(stays) - 1)


def _car_span(car: Car) -> int:
    return car.depart_s + sum(s.duration_s + GAP_BETWEEN_STAYS_S for s in car.stays)


# --------------------------------------------------------------------------- files


def _netgenerate(out: Path) -> None:
    try:
        binary = sumolib.checkBinary("netgenerate")
        result = subprocess.run(
            [binary, *_NETGENERATE, "--output-file", str(out)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ScenarioError(f"cannot run netgenerate: {exc}") from exc
    if result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        raise ScenarioError(f"netgenerate failed (exit {result.returncode}): {detail}")


def _check_net(path: Path) -> None:
    net = sumolib.net.readNet(str(path))
    for edge in (*ENTRY_EDGES, *EXIT_EDGES, *(e for e, _, _ in LOTS.values())):
        if not net.hasEdge(edge):
            raise ScenarioError(f"{path}: the generated grid has no edge {edge}")


def _additional() -> ET.Element:
    root = ET.Element("additional")
    for lot_id, (edge, start, end) in sorted(LOTS.items()):
        ET.SubElement(
            root,
            "parkingArea",
            id=lot_id,
            lane=f"{edge}_0",
            startPos=f"{start:g}",
            endPos=f"{end:g}",
            roadsideCapacity=str(LOT_CAPACITY),
            friendlyPos="true",
        )
    return root


def _routes(cars: tuple[Car, ...]) -> ET.Element:
    root = ET.Element("routes")
    ET.SubElement(root, "vType", id="car", vClass="passenger", length="4.5")
    for i, car in enumerate(sorted(cars, key=lambda c: (c.depart_s, c.vehicle_id))):
        attrs = {
            "id": car.vehicle_id,
            "type": "car",
            "depart": str(car.depart_s),
            "departLane": "best",
            "from": ENTRY_EDGES[i % len(ENTRY_EDGES)],
            "to": EXIT_EDGES[i % len(EXIT_EDGES)],
        }
        trip = ET.SubElement(root, "trip", attrs)
        for stay in car.stays:
            ET.SubElement(trip, "stop", parkingArea=stay.lot_id, duration=str(stay.duration_s))
    return root


def _sumocfg(end_s: int) -> ET.Element:
    root = ET.Element("configuration")
    inputs = ET.SubElement(root, "input")
    ET.SubElement(inputs, "net-file", value=f"{NAME}.net.xml")
    ET.SubElement(inputs, "route-files", value=f"{NAME}.rou.xml")
    ET.SubElement(inputs, "additional-files", value=f"{NAME}.add.xml")
    time = ET.SubElement(root, "time")
    ET.SubElement(time, "begin", value="0")
    ET.SubElement(time, "end", value=str(end_s))
    ET.SubElement(time, "step-length", value=f"{STEP_LENGTH_S:g}")
    output = ET.SubElement(root, "output")
    ET.SubElement(output, "stop-output", value="stops.xml")
    processing = ET.SubElement(root, "processing")
    ET.SubElement(processing, "time-to-teleport", value="-1")
    report = ET.SubElement(root, "report")
    ET.SubElement(report, "no-step-log", value="true")
    ET.SubElement(report, "no-warnings", value="true")
    return root


def _write_xml(root: ET.Element, path: Path) -> None:
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n', encoding="utf-8")
