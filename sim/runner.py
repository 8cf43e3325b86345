"""Run one scenario under one controller: step SUMO, feed readings, apply signal commands."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from citybrain.control.catalog import make_controller
from citybrain.control.drive import SignalDriver
from citybrain.control.escort import EscortController, EscortMode
from citybrain.control.local import ACTUATED_PROGRAM, OWN_PROGRAM
from citybrain.control.model import Intersection
from citybrain.control.port import Controller
from citybrain.errors import ConfigError, ScenarioError
from citybrain.netmodel.corridors import NetCorridors
from citybrain.netmodel.net import (
    NetGeometry,
)
from citybrain.settings import Settings
from citybrain.sim import backend as sb
from citybrain.sim.detectors import (
    write_additional,
)
from citybrain.sim.fieldloop import FieldLoop, FieldOptions, RemoteController
from citybrain.sim.freeflow import free_flow_times
from citybrain.sim.gps import EmergencyWatch, Escorter
from citybrain.sim.loading import (
    Prepared,
    describe_detectors,
    describe_programs,
    load,
    prepare,
)
from citybrain.sim.metrics import (
    EmergencyTrip,
    Metrics,
    TripSummary,
    VehicleCounts,
    emergency_types,
    summarize,
)
from citybrain.sim.monitor import SignalMonitor
from citybrain.sim.programs import write_actuated_programs
from citybrain.sim.scenario import Scenario
from citybrain.sim.sensors import SensorModel
from citybrain.sim.sumoargs import RESCO_FLAGS, make_run_dirs, scenario_additionals, sumo_args
from citybrain.sim.timespace import write_escort_records

__all__ = [
    "RESCO_FLAGS",
    "Prepared",
    "RunOptions",
    "RunResult",
    "load",
    "prepare",
    "run",
    "sumo_args",
]

UNSAFE_RULES = frozenset(
    {"conflict", "green_to_red", "short_yellow", "short_all_red", "short_green"}
)
"""The monitor's rules whose breach is unsafe (``long_green`` is a timing finding)."""

STANDING_S = 300.0
"""A vehicle that has not moved for this long at the end of a run is counted as gridlocked."""

MODELLED_KINDS = frozenset({"static", "actuated", "delay_based", "NEMA"})
"""Program types whose phases citybrain models (rail signals and switched-off ones it leaves)."""


@dataclass(frozen=True)
class RunOptions:
    controller: str = "fixed"
    seed: int = 1
    backend: str = "libsumo"
    settings: Settings = field(default_factory=Settings)
    end_s: float | None = None
    """Stop earlier than the scenario's own end (for short checks)."""
    timeline: bool = False
    """Write ``timeline.json``: every signal's shown states, as (time, state) at each change."""
    escort: str = "none"
    """Escort emergency vehicles: ``none``, ``local`` (Opticom-style) or ``corridor``."""
    begin_s: float | None = None
    """Start later than the scenario's own begin (for short checks)."""
    escort_baseline: bool = True
    """With an escort, also run the same seed without one, for the civilian delay."""
    field: FieldOptions | None = None
    """SUMO-in-the-loop: SUMO is the field, one cabinet per signal on this broker, and the
    controller runs in a separate ``citybrain control serve`` (``controller`` is unused)."""


@dataclass(frozen=True)
class RunResult:
    metrics: Metrics
    out_dir: Path
    signal_writes: int
    """How often the run had to override what SUMO's own program would have shown."""


Progress = Callable[[float], None]


def sumo_version() -> str:
    import sumolib

    return str(getattr(sumolib, "__version__", "") or _binary_version())


def _binary_version() -> str:
    import subprocess

    import sumolib

    out = subprocess.run(
        [sumolib.checkBinary("sumo"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    first = out.splitlines()[0] if out else ""
    return first.rsplit(" ", 1)[-1]


def run(
    scenario_path: Path, out_dir: Path, options: RunOptions, progress: Progress | None = None
) -> RunResult:
    mode = _escort_mode(options.escort)
    ready = load(scenario_path, options.settings.detectors, options.backend)
    scenario, net, layout = ready.scenario, ready.net, ready.layout
    if options.begin_s is not None and options.begin_s > scenario.begin_s:
        scenario = dataclasses.replace(scenario, begin_s=options.begin_s)
    field_loop: FieldLoop | None = None
    controller: Controller
    if options.field is not None:
        controller = RemoteController()
        field_loop = FieldLoop(layout, options.settings, options.field, scenario.begin_s)
    else:
        controller = make_controller(options.controller, layout, options.settings)
    kinds = emergency_types([*scenario.route_files, *scenario.additional_files])
    escort: EscortController | None = None
    escorter: Escorter | None = None
    if field_loop is not None:
        if mode is not EscortMode.NONE:
            raise ConfigError(
                "--escort is the service's in a field run (citybrain control serve --escort)"
            )
        escorter = field_loop.escorter if kinds else None
    elif kinds and (mode is not EscortMode.NONE or controller.signal_program is None):
        escort = EscortController(
            controller,
            mode,
            layout,
            NetCorridors(net, layout.intersections),
            options.settings.envelope,
            options.settings.escort,
        )
        controller = escort
        escorter = escort
    elif mode is not EscortMode.NONE and controller.signal_program is not None:
        raise ConfigError(
            f"--escort needs a controller whose requests go through the envelope, "
            f"not {controller.name!r}"
        )
    if field_loop is not None:
        field_loop.start()  # before anything is written: a broker that is not there fails clean
    make_run_dirs(out_dir)
    end = min(options.end_s or scenario.end_s, scenario.end_s)
    if end <= scenario.begin_s:
        raise ScenarioError(f"the run would end ({end:g}) before it begins ({scenario.begin_s:g})")
    open_end = not scenario.end_given and options.end_s is None
    watch_only = controller.signal_program is not None
    city_plan = controller.signal_program == OWN_PROGRAM  # WAUTs are the city's plan too
    adds = scenario_additionals(scenario, out_dir, drop_wauts=not city_plan)
    if controller.signal_program == ACTUATED_PROGRAM:
        adds.append(write_actuated_programs(layout.intersections, out_dir / "programs.add.xml"))
    if controller.uses_detectors:
        adds.append(
            write_additional(
                layout, NetGeometry(net), out_dir / "detectors.add.xml", ready.city_detectors
            )
        )
    args = sumo_args(scenario, options.seed, out_dir, adds, None if open_end else end)
    backend = sb.open_backend(options.backend)
    watch = (
        EmergencyWatch(
            backend,
            NetCorridors(net, layout.intersections),
            escorter,
            options.settings.gps,
            options.seed,
        )
        if kinds
        else None
    )
    wall = time.perf_counter()
    try:
        backend.start(args)
        try:
            loop = _loop(
                backend,
                ready,
                scenario,
                controller,
                options,
                end,
                open_end,
                progress,
                watch,
                field_loop,
            )
        finally:
            backend.close()
    finally:
        if field_loop is not None:
            field_loop.close()
    wall = time.perf_counter() - wall
    end = loop.end_s
    free_flow = free_flow_times(scenario, kinds, out_dir) if kinds else {}
    summary = summarize(
        out_dir / "tripinfo.xml",
        out_dir / "statistics.xml",
        end - scenario.begin_s,
        kinds,
        free_flow,
    )
    baseline = None
    if watch is not None and mode is not EscortMode.NONE and options.escort_baseline:
        plain = dataclasses.replace(options, escort="none", escort_baseline=False)
        baseline = run(scenario_path, out_dir / "baseline", plain).metrics
    extra: dict[str, Any] = {
        "backend": options.backend,
        "window_s": [scenario.begin_s, end],
        "window": scenario.window_note if options.end_s is None else "cut short by --end",
        "signal_writes": loop.writes,
        "decision_ms_per_intersection": loop.decision_stats(len(layout.intersections)),
        "sensors": asdict(options.settings.sensors),
        "escort": str(mode),
        "civilian_delay_s": summary.civilian_delay_s,
        "standing_at_end": loop.standing,
        "programs": describe_programs(ready),
        "detectors": describe_detectors(
            ready, options.settings.detectors.source, controller.uses_detectors
        ),
    }
    if watch_only or field_loop is not None:
        extra["monitor_findings"] = loop.findings
    if field_loop is not None:
        extra["field"] = field_loop.report(loop.unsafe_shown)
    metrics = Metrics(
        scenario=scenario.name,
        controller=controller.name,
        seed=options.seed,
        sumo_version=sumo_version(),
        mean_delay_s=summary.mean_delay_s,
        mean_travel_time_s=summary.mean_travel_time_s,
        mean_waiting_time_s=summary.mean_waiting_time_s,
        throughput_veh_per_h=summary.throughput_veh_per_h,
        vehicles=VehicleCounts(summary.completed, summary.unfinished, summary.never_departed),
        emergency=_emergency(summary, watch, mode, baseline),
        wall_time_s=wall,
        extra=extra,
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics.to_json(), indent=2) + "\n")
    if options.timeline:
        (out_dir / "timeline.json").write_text(json.dumps(loop.timeline) + "\n")
    if watch is not None:
        title = f"{scenario.name} / {controller.name} / escort {mode}"
        write_escort_records(watch, escort, out_dir, title)
    return RunResult(metrics, out_dir, loop.writes)


def _escort_mode(name: str) -> EscortMode:
    try:
        return EscortMode(name)
    except ValueError:
        choices = ", ".join(m.value for m in EscortMode)
        raise ConfigError(f"unknown escort mode {name!r}; choose one of: {choices}") from None


def _emergency(
    summary: TripSummary,
    watch: EmergencyWatch | None,
    mode: EscortMode,
    baseline: Metrics | None,
) -> list[EmergencyTrip]:
    """Emergency trips with what the run saw of them and the civilian delay beside them."""
    civilian = summary.civilian_delay_s
    without = civilian if mode is EscortMode.NONE else None
    if baseline is not None:
        without = float(baseline.extra["civilian_delay_s"])
    change = civilian / without - 1.0 if without else None
    trips = []
    for trip in summary.emergency:
        rec = watch.records.get(trip.id) if watch is not None else None
        trips.append(
            dataclasses.replace(
                trip,
                ran_red=rec.ran_red if rec is not None else None,
                on_yellow=rec.on_yellow if rec is not None else None,
                escort=str(mode),
                civilian_delay_s=civilian,
                civilian_delay_no_escort_s=without,
                civilian_delay_change=change,
            )
        )
    return trips


@dataclass
class _LoopStats:
    writes: int = 0
    end_s: float = 0.0
    decisions_ns: list[int] = field(default_factory=list)
    timeline: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    findings: dict[str, Any] = field(default_factory=dict)
    standing: int = 0
    unsafe_shown: int = 0
    """Field runs: violations of the unsafe rules in what SUMO showed."""

    def decision_stats(self, intersections: int) -> dict[str, float]:
        """CPU cost of one controller decision per intersection, in milliseconds."""
        if not self.decisions_ns:
            return {}
        per = np.array(self.decisions_ns, dtype=np.float64) / 1e6 / max(intersections, 1)
        return {
            "mean": float(per.mean()),
            "p99": float(np.percentile(per, 99)),
            "max": float(per.max()),
        }


class _Signals:
    """Applies envelope output, writing to SUMO only where its own program would differ."""

    def __init__(self, backend: sb.Backend, intersections: tuple[Intersection, ...]) -> None:
        self.backend = backend
        self.plans = {x.id: [s.state for s in x.plan] for x in intersections}
        self.overridden: set[str] = set()
        self.writes = 0

    def apply(self, signal: str, wanted: str, sumo: dict[int, Any]) -> None:
        upcoming = sumo[sb.TL_RED_YELLOW_GREEN_STATE]
        if signal not in self.overridden and self.backend.time() >= sumo[sb.TL_NEXT_SWITCH]:
            plan = self.plans[signal]
            upcoming = plan[(int(sumo[sb.TL_CURRENT_PHASE]) + 1) % len(plan)]
        if wanted != upcoming:
            self.backend.set_signal_state(signal, wanted)
            self.overridden.add(signal)
            self.writes += 1


def _loop(
    backend: sb.Backend,
    ready: Prepared,
    scenario: Scenario,
    controller: Controller,
    options: RunOptions,
    end: float,
    open_end: bool,
    progress: Progress | None,
    watch: EmergencyWatch | None = None,
    field_loop: FieldLoop | None = None,
) -> _LoopStats:
    """Step SUMO until ``end`` (or, with ``open_end``, until no vehicle is left)."""
    layout = ready.layout
    xs = layout.intersections
    own_program = controller.signal_program is not None
    stats = _LoopStats()
    loop_ids = [d.id for d in layout.loops] if controller.uses_detectors else []
    cam_ids = [d.id for d in layout.cameras] if controller.uses_detectors else []
    if controller.signal_program is None:  # the run's files may lack the WAUT that chose it
        for x in xs:
            backend.align(ready.loaded.signals[x.id])
    backend.subscribe(loop_ids, cam_ids, [x.id for x in xs])
    sensors = SensorModel(layout, options.settings.sensors)
    driver = SignalDriver(controller, xs, options.settings.envelope, scenario.begin_s)
    signals = _Signals(backend, xs)
    monitor = SignalMonitor(xs, options.settings.envelope)
    program = {x.id: ready.loaded.signals[x.id].active for x in xs if x.id in ready.loaded.signals}
    last_ids: list[tuple[str, ...]] = [() for _ in loop_ids]
    loop_count = np.zeros(len(loop_ids), dtype=np.int64)
    loop_occ = np.zeros(len(loop_ids), dtype=np.float64)
    cam_count = np.zeros(len(cam_ids), dtype=np.int64)
    cam_queue = np.zeros(len(cam_ids), dtype=np.int64)
    t = backend.time()
    if field_loop is not None:
        field_loop.preroll(t)
    while t < end - 1e-9:
        if open_end and t > scenario.begin_s and backend.expected_vehicles() == 0:
            break
        if loop_ids:
            values = backend.loop_values()
            for i, d in enumerate(loop_ids):
                v = values.get(d)
                if v is None:
                    continue
                ids = v[sb.LAST_STEP_VEHICLE_ID_LIST]
                seen = last_ids[i]
                loop_count[i] = sum(1 for vid in ids if vid not in seen) if ids else 0
                last_ids[i] = ids
                # a fraction of the step; SUMO can report above 100 % (two vehicles in a step)
                loop_occ[i] = min(1.0, float(v[sb.LAST_STEP_OCCUPANCY]) / 100.0)
            cams = backend.camera_values()
            for i, d in enumerate(cam_ids):
                v = cams.get(d)
                if v is None:
                    continue
                cam_count[i] = int(v[sb.LAST_STEP_VEHICLE_NUMBER])
                cam_queue[i] = int(v[sb.LAST_STEP_VEHICLE_HALTING_NUMBER])
        lc, lo = sensors.loops(loop_count, loop_occ)
        cc, cq = sensors.cameras(cam_count, cam_queue)
        gps = watch.before(t) if watch is not None else ()
        if field_loop is not None:  # the controller decides in the control service
            wanted, holds = field_loop.step(t, lc, lo, cc, cq, gps)
        else:
            step = driver.step(driver.readings(t, lc, lo, cc, cq, gps))  # shared with the field
            stats.decisions_ns.append(step.decide_ns)
            wanted, holds = dict(step.states), dict(step.holds)
        if not own_program:
            states = backend.signal_states()
            for x in xs:
                signals.apply(x.id, wanted[x.id], states[x.id])
        backend.step()
        shown = backend.signal_states()  # what SUMO showed during [t, t + 1)
        if watch is not None:
            watch.after(shown)
        for x in xs:
            values_x = shown[x.id]
            if own_program and values_x.get(sb.TL_CURRENT_PROGRAM, "") != program.get(x.id, ""):
                program[x.id] = str(values_x[sb.TL_CURRENT_PROGRAM])  # a WAUT switched it
                switched = ready.model_of(x.id, program[x.id])
                if switched is not None:
                    monitor.switch(switched)
            state = values_x[sb.TL_RED_YELLOW_GREEN_STATE]
            monitor.observe(t, x.id, state, holds.get(x.id, False))
            if options.timeline:
                changes = stats.timeline.setdefault(x.id, [])
                if not changes or changes[-1][1] != state:
                    changes.append((t, state))
        t = backend.time()
        if progress is not None:
            progress(t)
    stats.writes = signals.writes
    stats.end_s = t
    stats.standing = backend.standing_vehicles(STANDING_S)
    if own_program:
        stats.findings = monitor.findings()  # the city's program: reported, not citybrain's
    elif field_loop is not None:  # reported: the field object says what was unsafe
        stats.findings = monitor.findings()
        stats.unsafe_shown = sum(1 for v in monitor.violations if v.rule in UNSAFE_RULES)
    else:
        monitor.raise_if_any()
    return stats
