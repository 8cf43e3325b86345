"""Ambulance escort benchmark: no preemption, local (Opticom-style) and corridor, side by side.

Every scenario runs under ``adaptive`` with ``--escort none``, ``local`` and ``corridor`` on
the same seeds. Per ambulance: travel time over its free-flow time (alone on the empty
network, every signal green), stops (tripinfo ``waitingCount``) and stop lines crossed on
red (from its own passage against the lamps shown). Civilian delay: RESCO's mean delay of
every other vehicle, over the whole run and over the vehicles that departed from 5 minutes
before the first ambulance to 5 minutes after the last one arrived, each against the
``none`` run of the same seed (the same run a ``citybrain sim run --escort`` makes for its
baseline).

Scenarios: ``arterial`` and ``grid-amb`` (the library's grid with an ambulance that crosses
it and turns left) are the ones the escort was developed on. The others were not looked at
while developing: a longer arterial with other spacing, demand and seed, whose ambulance runs
the other way; and a 4x4 two-lane grid with two ambulances on crossing routes that meet at
one signal (a conflict resolved by the escorts' priorities and arrivals).

    python bench/escort.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citybrain.control.escort import EscortSettings
from citybrain.sim.benchreport import machine, write_section
from citybrain.sim.library import build_scenario, load_spec
from citybrain.sim.runner import RunOptions, run, sumo_version

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- escort-bench:begin -->", "<!-- escort-bench:end -->"
MODES = ("none", "local", "corridor")
WINDOW_S = 300.0

ARTERIAL7 = """
name = "arterial7"
description = "unseen: 7 signals 300 m apart, heavier, the ambulance runs east to west"
[net]
x_number = 7
y_number = 1
x_length = 300.0
attach_length = 200.0
lanes = 2
speed_kmh = 50.0
turn_lanes = 1
turn_lane_length = 60.0
cycle_s = 100
yellow_s = 3
left_green_s = 8
[demand]
window_s = 3600
slice_s = 300
peak_veh_per_h = 1150.0
side_factor = 0.35
main_axis = "x"
offpeak_fraction = 0.4
turn_left = 0.12
turn_right = 0.12
rate_noise = 0.15
[[demand.emergency]]
id = "ambulance"
depart = 1750
from = "right0G0"
to = "A0left0"
"""

GRID4 = """
name = "grid4x4-two"
description = "unseen: 4x4 two-lane grid, two ambulances on crossing routes meeting at C1"
[net]
x_number = 4
y_number = 4
x_length = 220.0
attach_length = 200.0
lanes = 2
speed_kmh = 50.0
turn_lanes = 1
turn_lane_length = 50.0
cycle_s = 80
yellow_s = 3
left_green_s = 6
[demand]
window_s = 3600
slice_s = 300
peak_veh_per_h = 600.0
offpeak_fraction = 0.45
turn_left = 0.15
turn_right = 0.15
rate_noise = 0.15
[[demand.emergency]]
id = "ambulance_we"
depart = 1800
from = "left1A1"
to = "D1right1"
[[demand.emergency]]
id = "ambulance_sn"
depart = 1815
from = "bottom2C0"
to = "C3top2"
"""

GRID53 = """
name = "grid5x3-left"
description = "unseen: 5x3 grid, short turn pockets, the ambulance turns left at C1"
[net]
x_number = 5
y_number = 3
x_length = 240.0
attach_length = 200.0
lanes = 2
speed_kmh = 50.0
turn_lanes = 1
turn_lane_length = 40.0
cycle_s = 80
yellow_s = 3
left_green_s = 6
[demand]
window_s = 3600
slice_s = 300
peak_veh_per_h = 700.0
offpeak_fraction = 0.45
turn_left = 0.18
turn_right = 0.12
rate_noise = 0.15
[[demand.emergency]]
id = "ambulance"
depart = 1800
from = "left1A1"
to = "C2top2"
"""

ARTERIAL5 = """
name = "arterial5"
description = "unseen: 5 signals 250 m apart, the ambulance runs west to east"
[net]
x_number = 5
y_number = 1
x_length = 250.0
attach_length = 200.0
lanes = 2
speed_kmh = 50.0
turn_lanes = 1
turn_lane_length = 45.0
cycle_s = 90
yellow_s = 3
left_green_s = 8
[demand]
window_s = 3600
slice_s = 300
peak_veh_per_h = 1000.0
side_factor = 0.4
main_axis = "x"
offpeak_fraction = 0.4
turn_left = 0.15
turn_right = 0.1
rate_noise = 0.15
[[demand.emergency]]
id = "ambulance"
depart = 1700
from = "left0A0"
to = "E0right0"
"""

GRID_AMB = """
[[demand.emergency]]
id = "ambulance"
depart = 1800
from = "left1A1"
to = "B2top1"
"""


CONFLICT_NOTE = (
    "\nNotes: `grid4x4-two` is built so that its two ambulances reach signal C1 within "
    "about 2 s of each other on crossing routes. The escorts resolve it by arrival (equal "
    "priorities): the first one is served without a stop; the other cannot have its green "
    "before the first one has crossed and C1's change interval (yellow, then all-red) has "
    "run, longer than the 2 s between them, so it stops once at C1: a stop the safety rules "
    "force, not one a signal plan could avoid (its ratio then depends on the queue ahead of "
    "it there). Until 2026-11-23 that wait was also counted as a futile hold (an ambulance "
    "standing still through a held green), which paused its escort and cost a second stop "
    "on seed 2; now only standing through its own green counts. Civilian delay `vs none` "
    "over the hour is within SUMO's run-to-run noise (another signal sequence reshuffles "
    "the whole hour); the ±5 min column is the sharper measure of what an escort costs the "
    "others. `arterial7` was unseen until 2026-11-23, when one of its runs was studied "
    "while the turn-pocket rule was developed (on `grid-amb`): it now counts as seen. "
    "`grid5x3-left` and `arterial5` were written and run once after that rule was final."
)


@dataclass(frozen=True)
class Case:
    name: str
    seen: bool
    spec_text: str | None  # None: a packaged library scenario by name
    library: str | None
    demand_seed: int


CASES = (
    Case("arterial", True, None, "arterial", 1),
    Case("grid-amb", True, "grid+", "grid", 1),
    Case("arterial7", True, ARTERIAL7, None, 7),  # seen since 2026-11-23 (see the notes)
    Case("grid4x4-two", False, GRID4, None, 5),
    Case("grid5x3-left", False, GRID53, None, 11),
    Case("arterial5", False, ARTERIAL5, None, 3),
)


def build(case: Case, out: Path) -> Path:
    folder = out / "scenarios" / case.name
    if case.library is not None and case.spec_text is None:
        return build_scenario(load_spec(case.library), folder, seed=case.demand_seed)
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f"{case.name}.toml"
    if case.spec_text == "grid+":
        base = (ROOT / "configs" / "scenarios" / "grid.toml").read_text()
        text = base.replace('name = "grid"', f'name = "{case.name}"') + GRID_AMB
    else:
        text = case.spec_text or ""
    spec.write_text(text)
    return build_scenario(load_spec(spec), folder, seed=case.demand_seed)


def _job(job: tuple[str, str, str, int, str]) -> dict[str, Any]:
    case, cfg, mode, seed, out = job
    result = run(
        Path(cfg),
        Path(out),
        RunOptions("adaptive", seed, escort=mode, escort_baseline=False),
    )
    m = result.metrics
    window = _window(Path(out) / "tripinfo.xml", {e.id for e in m.emergency})
    return {
        "case": case,
        "mode": mode,
        "seed": seed,
        "civilian_delay_s": m.extra["civilian_delay_s"],
        "civilian_window_delay_s": window,
        "wall_s": m.wall_time_s,
        "emergency": [
            {
                "id": e.id,
                "travel_time_s": e.travel_time_s,
                "free_flow_time_s": e.free_flow_time_s,
                "ratio": e.ratio_to_free_flow,
                "stops": e.stops,
                "ran_red": e.ran_red,
                "completed": e.completed,
            }
            for e in m.emergency
        ],
    }


def _window(tripinfo: Path, emergency: set[str]) -> float:
    """Mean delay of civilian vehicles departing around the ambulances' trips."""
    trips = [t.attrib for t in ET.parse(tripinfo).getroot().iter("tripinfo")]
    amb = [t for t in trips if t["id"] in emergency]
    if not amb:
        return float("nan")
    lo = min(float(t["depart"]) for t in amb) - WINDOW_S
    hi = max(float(t["arrival"]) if float(t["arrival"]) >= 0 else float(t["depart"])
             for t in amb) + WINDOW_S
    delays = [
        float(t["timeLoss"]) + float(t["departDelay"])
        for t in trips
        if t["id"] not in emergency and lo <= float(t["depart"]) <= hi
    ]
    return statistics.mean(delays) if delays else float("nan")


def table(results: list[dict[str, Any]], cases: list[Case], seeds: list[int]) -> str:
    lines = [
        "| scenario | seen | mode | ambulance / free flow (mean, max) | stops | ran red "
        "| ≤ 1.2x, 0 stops | civilian delay (s) | vs none | civilian delay ±5 min (s) "
        "| vs none |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets: dict[str, list[bool]] = {m: [] for m in MODES}
    civ_ok: dict[str, list[bool]] = {m: [] for m in MODES}
    for case in cases:
        none = {r["seed"]: r for r in results if r["case"] == case.name and r["mode"] == "none"}
        for mode in MODES:
            rows = [r for r in results if r["case"] == case.name and r["mode"] == mode]
            if not rows:
                continue
            trips = [e for r in rows for e in r["emergency"]]
            ratios = [e["ratio"] for e in trips if e["ratio"] is not None]
            ok = [
                e["ratio"] is not None and e["ratio"] <= 1.2 and e["stops"] == 0
                and e["ran_red"] == 0
                for e in trips
            ]
            targets[mode] += ok
            civ = statistics.mean(r["civilian_delay_s"] for r in rows)
            win = statistics.mean(r["civilian_window_delay_s"] for r in rows)
            changes = [
                r["civilian_delay_s"] / none[r["seed"]]["civilian_delay_s"] - 1
                for r in rows if r["seed"] in none
            ]
            wchanges = [
                r["civilian_window_delay_s"] / none[r["seed"]]["civilian_window_delay_s"] - 1
                for r in rows if r["seed"] in none
            ]
            if mode != "none":
                civ_ok[mode] += [c <= 0.05 for c in changes]
            against = mode != "none" and changes  # blank for `none`, and without `none` runs
            change = f"{100 * statistics.mean(changes):+.1f} %" if against else ""
            wchange = f"{100 * statistics.mean(wchanges):+.1f} %" if against else ""
            lines.append(
                f"| {case.name} | {'yes' if case.seen else 'no'} | {mode} "
                f"| {statistics.mean(ratios):.2f}, {max(ratios):.2f} "
                f"| {sum(e['stops'] for e in trips)} | {sum(e['ran_red'] or 0 for e in trips)} "
                f"| {sum(ok)}/{len(ok)} | {civ:.1f} | {change} | {win:.1f} | {wchange} |"
            )
    lines.append("")
    for mode in MODES:
        ok, civ = targets[mode], civ_ok[mode]
        if not ok:
            continue  # not run
        extra = f"; civilian delay within +5 % in {sum(civ)}/{len(civ)} runs" if civ else ""
        lines.append(
            f"- `{mode}`: {sum(ok)}/{len(ok)} ambulance trips within 1.2x free flow with no "
            f"stop and no red{extra}."
        )
    if any(c.name == "grid4x4-two" for c in cases):
        lines.append(CONFLICT_NOTE)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "escort")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--write", type=Path, help="update the escort section of this file")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [c for c in CASES if c.name in args.cases.split(",")]
    modes = [m for m in MODES if m in args.modes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    cfgs = {c.name: build(c, args.out) for c in cases}
    jobs = [
        (c.name, str(cfgs[c.name]), mode, seed, str(args.out / "runs" / f"{c.name}-{mode}-{seed}"))
        for c in cases
        for seed in seeds
        for mode in modes
    ]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_job, jobs))
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    body = table(results, cases, seeds)
    print(body)
    if args.write:
        cmd = "python bench/escort.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        info = machine(ROOT)
        esc = EscortSettings()
        head = (
            "## Ambulance escort: none vs local vs corridor\n\n"
            f"Command: `{cmd}`\n\n"
            f"Machine: {info['platform']}, {info['cores']} cores, Python {info['python']}, "
            f"SUMO {info['sumo']}, {info['date']}; code {info['code']}.\n\n"
            f"Controller `adaptive`, seeds {args.seeds}, the whole hour of each scenario "
            "(ambulances at the peak). Ratios: travel time over the free-flow time (alone on "
            "the empty net, all signals green). Civilian delay: RESCO's mean delay of the "
            "other vehicles, over the run and over those departing within 5 minutes of the "
            "ambulances' trips; `vs none`: mean over seeds of the per-seed change against "
            "`none`.\n\n"
            "Queue discharge constants (`[escort]` settings, defaults) measured by "
            "`python bench/escort_calibrate.py --seeds 1,2,3,4,5` (150 queued vehicles, "
            f"SUMO {sumo_version()}, 1 s steps): headway {esc.headway_s:g} s, start-up lost "
            f"time {esc.lost_time_s:g} s, crossing {esc.cross_s:g} s.\n"
        )
        write_section(args.write, BEGIN, END, f"{BEGIN}\n{head}\n{body}\n{END}")
        print(f"wrote the escort section of {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
