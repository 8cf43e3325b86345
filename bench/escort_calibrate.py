"""Measure queue discharge in SUMO: saturation headway, start-up lost time, crossing time.

The escort's clearance time is ``lost_time_s + headway_s x queued vehicles + cross_s``
(``control/escort.py``). This script measures the three constants on the library's
single-intersection net with the library's passenger vehicle type: a queue of ``--queue``
vehicles per lane forms on the west approach (both through lanes) at a red light, then the
through movement turns green and every vehicle's stop-line crossing is timed (the first
step it is on the junction's internal lane) and its exit from the junction (the first step
on the outgoing edge).

* ``headway_s``: the slope of crossing time against position in the lane's queue, fitted
  by least squares from the 5th vehicle on (saturation flow);
* ``lost_time_s``: the mean over all queue positions n of (crossing time - green start -
  headway x n): the clearance of n vehicles is then lost_time + headway x n;
* ``cross_s``: the mean time from the stop line to the outgoing edge.

    python bench/escort_calibrate.py --seeds 1,2,3,4,5

Measurement code: it reads every vehicle (that is its job); no controller does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import sumolib

from citybrain.sim.library import build_scenario, load_spec

APPROACH = "left0A0.240.00"
ENTRY = "left0A0"
EXIT = "A0right0"


def _routes(path: Path, queue: int) -> None:
    vehicles = "\n".join(
        f'  <vehicle id="q{k}" type="passenger" depart="{k * 1.0:.1f}" route="r" '
        f'departLane="{k % 2}" departSpeed="max"/>'
        for k in range(2 * queue)
    )
    path.write_text(
        f"""<routes>
  <vType id="passenger" vClass="passenger" accel="2.6" decel="4.5" sigma="0.5" length="5"
         minGap="2.5" speedDev="0.1"/>
  <route id="r" edges="{ENTRY} {APPROACH} {EXIT}"/>
{vehicles}
</routes>
"""
    )


def measure(net: Path, seed: int, queue: int, red_s: float) -> dict[str, list[float]]:
    import libsumo as ls

    with tempfile.TemporaryDirectory() as tmp:
        rou = Path(tmp) / "q.rou.xml"
        _routes(rou, queue)
        ls.start(
            [
                sumolib.checkBinary("sumo"), "-n", str(net), "-r", str(rou), "--seed", str(seed),
                "--no-step-log", "true", "--no-warnings", "true", "--time-to-teleport", "-1",
            ]
        )
        try:
            links = ls.trafficlight.getControlledLinks("A0")
            through = [
                i for i, ls_ in enumerate(links)
                if ls_ and ls_[0][0].startswith(APPROACH) and ls_[0][1].startswith(EXIT)
            ]
            n = len(links)
            red = "r" * n
            green = "".join("G" if i in through else "r" for i in range(n))
            ls.trafficlight.setRedYellowGreenState("A0", red)
            crossed: dict[str, float] = {}
            cleared: dict[str, float] = {}
            order: dict[str, tuple[int, int]] = {}
            green_at = red_s
            t = 0.0
            while t < red_s + 200.0:
                if abs(t - red_s) < 1e-9:
                    ls.trafficlight.setRedYellowGreenState("A0", green)
                ls.simulationStep()
                t = ls.simulation.getTime()
                if abs(t - red_s) < 0.5:
                    by_lane: dict[int, list[tuple[float, str]]] = {}
                    for vid in ls.vehicle.getIDList():
                        ahead = ls.vehicle.getDrivingDistance(vid, EXIT, 0.0)
                        by_lane.setdefault(ls.vehicle.getLaneIndex(vid), []).append((ahead, vid))
                    for lane, queued in by_lane.items():
                        # position in the lane's queue: nearest the stop line first
                        for pos, (_, vid) in enumerate(sorted(queued), start=1):
                            order[vid] = (lane, pos)
                for vid in ls.vehicle.getIDList():
                    road = ls.vehicle.getRoadID(vid)
                    if road.startswith(":A0_") and vid not in crossed:
                        crossed[vid] = t  # it crossed during the step that ends now
                    if road == EXIT and vid not in cleared:
                        cleared[vid] = t
            found: dict[str, list[float]] = {"pos": [], "cross": [], "through": []}
            for vid, (_, pos) in order.items():
                if vid in crossed:
                    found["pos"].append(float(pos))
                    found["cross"].append(crossed[vid] - green_at)
                    if vid in cleared:
                        found["through"].append(cleared[vid] - crossed[vid])
            return found
        finally:
            ls.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--queue", type=int, default=15, help="vehicles per lane")
    parser.add_argument("--red", type=float, default=90.0, help="seconds of red before green")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_scenario(load_spec("single"), Path(tmp) / "single", seed=1)
        net = cfg.parent / "single.net.xml"
        pos: list[float] = []
        cross: list[float] = []
        through: list[float] = []
        for seed in (int(s) for s in args.seeds.split(",")):
            found = measure(net, seed, args.queue, args.red)
            pos += found["pos"]
            cross += found["cross"]
            through += found["through"]
    p, c = np.array(pos), np.array(cross)
    sat = p >= 5
    headway = float(np.polyfit(p[sat], c[sat], 1)[0])
    lost = float(np.mean(c - headway * p))
    result = {
        "headway_s": round(headway, 2),
        "lost_time_s": round(lost, 2),
        "cross_s": round(statistics.mean(through), 2),
        "vehicles": len(pos),
        "seeds": args.seeds,
        "first_vehicle_s": round(float(np.mean(c[p == 1])), 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
