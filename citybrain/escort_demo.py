"""The escort part of ``citybrain demo``: the arterial's ambulance without and with escort.

``run_escort_demo(out, seeds)`` builds the arterial, runs ``adaptive`` with ``--escort none``
and ``--escort corridor`` on each seed (two processes), prints the emergency table and copies
the time-space diagrams to ``out/escort-timespace-{none,corridor}-seedN.png``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from citybrain.sim.library import build_scenario, load_spec
from citybrain.sim.metrics import EmergencyTrip
from citybrain.sim.runner import RunOptions, run

MODES = ("none", "corridor")


@dataclass(frozen=True)
class EscortDemoRow:
    mode: str
    seed: int
    trip: EmergencyTrip
    civilian_delay_s: float


@dataclass(frozen=True)
class EscortDemo:
    rows: tuple[EscortDemoRow, ...]
    diagrams: tuple[Path, ...]
    table: str


def _one(job: tuple[str, str, int, str]) -> tuple[str, int, list[EmergencyTrip], float]:
    cfg, mode, seed, out = job
    options = RunOptions("adaptive", seed, escort=mode, escort_baseline=False)
    m = run(Path(cfg), Path(out), options).metrics
    return mode, seed, m.emergency, float(m.extra["civilian_delay_s"])


def run_escort_demo(out: Path, seeds: Sequence[int] = (1,), workers: int = 2) -> EscortDemo:
    """Run the arterial under ``adaptive`` without and with the corridor escort, per seed."""
    out.mkdir(parents=True, exist_ok=True)
    scenario = out / "scenario"
    cfg = scenario / "arterial.sumocfg"
    if not cfg.is_file():
        cfg = build_scenario(load_spec("arterial"), scenario, seed=1)
    jobs = [
        (str(cfg), mode, seed, str(out / "escort" / f"{mode}-seed{seed}"))
        for seed in seeds
        for mode in MODES
    ]
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        results = list(pool.map(_one, jobs))
    rows = tuple(
        EscortDemoRow(mode, seed, trip, civilian)
        for mode, seed, trips, civilian in results
        for trip in trips
    )
    civ_none = {r.seed: r.civilian_delay_s for r in rows if r.mode == "none"}
    lines = [
        "seed  escort    ambulance  travel (s)  free flow (s)  ratio  stops  ran red  "
        "civilian delay (s)",
        "----  --------  ---------  ----------  -------------  -----  -----  -------  "
        "------------------",
    ]
    for r in rows:
        t = r.trip
        ff = f"{t.free_flow_time_s:.0f}" if t.free_flow_time_s else "n/a"
        ratio = f"{t.ratio_to_free_flow:.2f}" if t.ratio_to_free_flow else "n/a"
        civ = f"{r.civilian_delay_s:.1f}"
        base = civ_none.get(r.seed)
        if base and r.mode != "none":
            civ += f" ({100 * (r.civilian_delay_s / base - 1):+.1f} %)"
        lines.append(
            f"{r.seed:>4}  {r.mode:<8}  {t.id:<9}  {t.travel_time_s:>10.0f}  {ff:>13}  "
            f"{ratio:>5}  {t.stops:>5}  {t.ran_red if t.ran_red is not None else '?':>7}  {civ}"
        )
    table = "\n".join(lines)
    print(table)
    diagrams = []
    for mode, seed, trips, _ in results:
        for trip in trips:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in trip.id)
            src = out / "escort" / f"{mode}-seed{seed}" / f"timespace-{safe}.png"
            if src.is_file():
                suffix = "" if len(trips) == 1 else f"-{safe}"
                dst = out / f"escort-timespace-{mode}-seed{seed}{suffix}.png"
                shutil.copyfile(src, dst)
                diagrams.append(dst)
    for d in diagrams:
        print(f"time-space diagram: {d}")
    return EscortDemo(rows, tuple(diagrams), table)
