"""The ``sumo`` binary run by hand on a scenario: the reference the harness must reproduce."""

from __future__ import annotations

import subprocess
from pathlib import Path

import sumolib

from citybrain.sim.metrics import summarize


def plain_sumo_delay(cfg: Path, seed: int, out: Path, end: float | None = None) -> float:
    """RESCO delay of plain ``sumo`` on the same scenario, seed and flags (its own outputs go
    where the scenario names them: give it a writable copy)."""
    out.mkdir(parents=True, exist_ok=True)
    args = [
        sumolib.checkBinary("sumo"),
        "-c",
        str(cfg),
        "--seed",
        str(seed),
        "--time-to-teleport",
        "-1",
        "--tripinfo-output.write-unfinished",
        "--tripinfo-output",
        str(out / "t.xml"),
        "--statistic-output",
        str(out / "s.xml"),
        "--no-step-log",
        "true",
        "--no-warnings",
        "true",
    ]
    if end is not None:
        args += ["--end", f"{end:g}"]
    subprocess.run(args, check=True, capture_output=True)
    return summarize(out / "t.xml", out / "s.xml", window_s=1).mean_delay_s
