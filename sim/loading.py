"""Load a scenario as SUMO does, and build the models controllers get of it.

SUMO is asked what it loaded (``probe``): the program each signal runs at the window's start
(from the net, an additional file, or a WAUT) and every detector the scenario defines. Each
signal is modelled on that program; the detector layout uses the scenario's own detectors
where they serve an approach (``citybrain.netmodel.layout``). ``describe_*`` say in ``metrics.json``
what was loaded and used.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citybrain.control.model import Intersection
from citybrain.control.port import Layout
from citybrain.errors import ScenarioError
from citybrain.netmodel.layout import (
    CityDetector,
    CityDetectorKind,
    DetectorPlacement,
    DetectorSource,
    build_layout,
)
from citybrain.netmodel.net import (
    NetGeometry,
    SignalPlan,
    has_unmapped_links,
    intersection_of,
    intersections_from_net,
    read_net,
)
from citybrain.sim import backend as sb
from citybrain.sim.loaded import LoadedScenario
from citybrain.sim.scenario import Scenario, load_scenario
from citybrain.sim.sumoargs import (
    additional_closure,
    make_run_dirs,
    scenario_additionals,
    sumo_args,
)
from citybrain.sim.sumoxml import iter_elements

MODELLED_KINDS = frozenset({"static", "actuated", "delay_based", "NEMA"})
"""Program types whose phases citybrain models (rail signals and switched-off ones it leaves)."""

_AREA_TAGS = frozenset({"laneAreaDetector", "e2Detector"})


@dataclass(frozen=True)
class Prepared:
    """A scenario as SUMO loads it, and the models the controllers get of it."""

    scenario: Scenario
    net: Any
    layout: Layout
    loaded: LoadedScenario
    """What SUMO loaded: every signal's programs and the one it runs, the city's detectors."""
    model_net: Any = None
    """The net the models were built from, when not ``net`` (read with internal lanes)."""

    @property
    def city_detectors(self) -> frozenset[str]:
        """Ids of the scenario's own detectors (its files define them)."""
        return frozenset(d.id for d in self.loaded.detectors)

    def model_of(self, signal: str, program: str) -> Intersection | None:
        """The model of ``signal`` running another of its loaded programs (a WAUT switch)."""
        loaded = self.loaded.signals.get(signal)
        if loaded is None or program not in loaded.programs:
            return None
        steps = loaded.programs[program].steps
        net = self.model_net if self.model_net is not None else self.net
        return intersection_of(net.getTLS(signal), None, SignalPlan(steps, 0.0))


def probe(scenario: Scenario, backend: str = "libsumo") -> LoadedScenario:
    """Load ``scenario`` in SUMO as a run will, and read what SUMO made of it (no step run)."""
    with tempfile.TemporaryDirectory(prefix="citybrain-probe-") as tmp:
        out = Path(tmp)
        make_run_dirs(out)
        args = sumo_args(scenario, 1, out, scenario_additionals(scenario, out, False), None)
        sumo = sb.open_backend(backend)
        sumo.start(args)
        try:
            loaded = sumo.loaded()
        finally:
            sumo.close()
    return loaded


def resolve_area_ends(
    scenario: Scenario, found: tuple[CityDetector, ...], net: Any
) -> tuple[CityDetector, ...]:
    """Area detectors over several lanes, with their end as the scenario's file gives it.

    TraCI reports such a detector's last lane but its start position on its first lane; the
    end on the last lane is the definition's ``endPos`` (from the lane's end if negative, the
    lane's end if absent).
    """
    ends: dict[str, tuple[str, float | None]] = {}
    for path in additional_closure(scenario.additional_files):
        for elem in iter_elements(path, _AREA_TAGS):
            lanes = elem.get("lanes", "").split()
            if len(lanes) > 1 and elem.get("id"):
                given = elem.get("endPos")
                ends[elem.get("id", "")] = (lanes[-1], float(given) if given else None)
    result = []
    for d in found:
        if d.kind is CityDetectorKind.AREA and d.id in ends:
            lane, end = ends[d.id]
            length = float(net.getLane(lane).getLength())
            at = length if end is None else (length + end if end < 0 else end)
            result.append(dataclasses.replace(d, lane=lane, pos_m=at))
        else:
            result.append(d)
    return tuple(result)


def load(
    scenario_path: Path, placement: DetectorPlacement | None = None, backend: str = "libsumo"
) -> Prepared:
    """Load a scenario as SUMO does, and build its intersection models and detector layout.

    Each signal is modelled on the program SUMO runs at the window's start (from the net,
    an additional file or a WAUT); the layout uses the scenario's own detectors as
    ``placement.source`` says.
    """
    scenario = load_scenario(scenario_path)
    loaded = probe(scenario, backend)
    net = read_net(scenario.net_file)
    plans = {
        sid: SignalPlan(sig.programs[sig.active].steps, sig.offset_s(scenario.begin_s))
        for sid, sig in loaded.signals.items()
        if sig.active in sig.programs and sig.programs[sig.active].kind in MODELLED_KINDS
    }
    intersections = tuple(x for x in intersections_from_net(net, plans=plans) if x.id in plans)
    full = None
    if has_unmapped_links(intersections):  # crossings: their conflicts need internal lanes
        full = read_net(scenario.net_file, internal=True)
        intersections = tuple(x for x in intersections_from_net(full, plans=plans) if x.id in plans)
    if not intersections:
        raise ScenarioError(f"{scenario.config.name}: the network has no traffic lights to control")
    detectors = resolve_area_ends(scenario, loaded.detectors, net)
    layout = build_layout(intersections, NetGeometry(net), placement, detectors)
    return Prepared(scenario, net, layout, dataclasses.replace(loaded, detectors=detectors), full)


def prepare(
    scenario_path: Path, placement: DetectorPlacement | None = None
) -> tuple[Scenario, Any, Layout]:
    """Load a scenario and build its intersection models and detector layout (see ``load``)."""
    ready = load(scenario_path, placement)
    return ready.scenario, ready.net, ready.layout


def describe_programs(ready: Prepared) -> dict[str, Any]:
    """Which program each signal ran at the start, where it is not the net's only one."""
    chosen = {
        sid: {"program": sig.active, "type": sig.programs[sig.active].kind}
        for sid, sig in ready.loaded.signals.items()
        if sig.active in sig.programs and (len(sig.programs) > 1 or sig.active != "0")
    }
    kinds = Counter(
        sig.programs[sig.active].kind
        for sig in ready.loaded.signals.values()
        if sig.active in sig.programs
    )
    return {"types": dict(kinds), "not_the_net_default": chosen}


def describe_detectors(ready: Prepared, source: DetectorSource, read: bool) -> dict[str, Any]:
    """How many of the detectors read are the scenario's own, and which were added."""
    layout, city = ready.layout, ready.city_detectors
    if not read:
        return {"source": str(source), "read": False}
    used = [d.id for d in (*layout.loops, *layout.cameras)]
    return {
        "source": str(source),
        "read": True,
        "city": sorted(d for d in used if d in city),
        "added": sorted(d for d in used if d not in city),
        "city_unused": sorted(city - set(used)),
    }
