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
from citybrain.sim.sumoargs import scenario_additionals, sumo_args


def run_plain(
    scenario_path: Path, out_dir: Path, seed: int, end_s: float | None = None
) -> TripSummary:
    """Run plain ``sumo`` into ``out_dir``; the trip summary of its tripinfo and statistics.

    ``end_s`` cuts the window short; without it the scenario's own end applies (or, if it
    has none, SUMO runs until every vehicle has left).
    """
    scenario = load_scenario(scenario_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    adds = scenario_additionals(scenario, out_dir, drop_wauts=False)
    end = min(end_s, scenario.end_s) if end_s is not None else None
    if end is None and scenario.end_given:
        end = scenario.end_s
    args = sumo_args(scenario, seed, out_dir, adds, end)
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise ScenarioError(f"plain sumo failed: {last[-1] if last else done.returncode}")
    window = (end if end is not None else _last_step(out_dir)) - scenario.begin_s
    return summarize(out_dir / "tripinfo.xml", out_dir / "statistics.xml", window)


def _last_step(out_dir: Path) -> float:
    """When a run without end stopped: the latest arrival SUMO recorded."""
    from citybrain.sim.sumoxml import iter_elements

    latest = 0.0
    for trip in iter_elements(out_dir / "tripinfo.xml", frozenset({"tripinfo"})):
        latest = max(latest, float(trip.get("arrival", "0")))
    return latest
