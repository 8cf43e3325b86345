"""Plain ``sumo`` on a scenario, no TraCI: the reference every ``fixed`` run must reproduce.

The command is the one the harness starts (the scenario's configuration with the harness's
overrides: seed, RESCO's flags, outputs into the run's folder), run as a subprocess of the
``sumo`` binary, so nothing of citybrain is in the loop.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from citybrain.errors import ScenarioError
from citybrain.sim.metrics import TripSummary, summarize
from citybrain.sim.scenario import load_scenario
from citybrain.sim.sumoargs import make_run_dirs, scenario_additionals, sumo_args


def run_plain(
    scenario_path: Path, out_dir: Path, seed: int, end_s: float | None = None
) -> TripSummary:
    """Run plain ``sumo`` into ``out_dir``; the trip summary of its tripinfo and statistics.

    ``end_s`` cuts the window short; without it the scenario's own end applies (or, if it
    has none, SUMO runs until every vehicle has left).
    """
    scenario = load_scenario(scenario_path)
    make_run_dirs(out_dir)
    adds = scenario_additionals(scenario, out_dir, drop_wauts=False)
    end = min(end_s, scenario.end_s) if end_s is not None else scenario.end_s
    # (a scenario without end: SUMO stops once every vehicle has left, at most at the
    # harness's horizon, as a run of the harness does)
    args = sumo_args(scenario, seed, out_dir, adds, end)
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise ScenarioError(f"plain sumo failed: {last[-1] if last else done.returncode}")
    open_end = end_s is None and not scenario.end_given
    window = (_last_step(out_dir) if open_end else end) - scenario.begin_s
    return summarize(out_dir / "tripinfo.xml", out_dir / "statistics.xml", window)


def _last_step(out_dir: Path) -> float:
    """When a run without end stopped: the latest arrival SUMO recorded."""
    from citybrain.sim.sumoxml import iter_elements

    latest = 0.0
    for trip in iter_elements(out_dir / "tripinfo.xml", frozenset({"tripinfo"})):
        latest = max(latest, float(trip.get("arrival", "0")))
    return latest
