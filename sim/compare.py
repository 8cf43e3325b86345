"""Compare controllers on one scenario over several seeds, in parallel processes."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from citybrain.settings import Settings
from citybrain.sim.runner import RunOptions, run

METRICS = (
    ("mean_delay_s", "delay (s)"),
    ("mean_travel_time_s", "travel time (s)"),
    ("mean_waiting_time_s", "waiting (s)"),
    ("throughput_veh_per_h", "throughput (veh/h)"),
    ("wall_time_s", "wall time (s)"),
)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.std:.1f}"


@dataclass(frozen=True)
class Comparison:
    scenario: str
    controllers: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: list[dict[str, Any]]
    summary: dict[str, dict[str, Stat]]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "controllers": list(self.controllers),
            "seeds": list(self.seeds),
            "summary": {
                c: {k: {"mean": s.mean, "std": s.std, "n": s.n} for k, s in m.items()}
                for c, m in self.summary.items()
            },
            "runs": self.runs,
        }


def stat(values: Sequence[float]) -> Stat:
    n = len(values)
    if n == 0:
        return Stat(math.nan, math.nan, 0)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return Stat(mean, math.sqrt(var), n)


Job = tuple[str, str, int, str, str, Settings, float | None, bool, str]


def _one(job: Job) -> dict[str, Any]:
    scenario, controller, seed, backend, out, settings, end_s, timeline, escort = job
    options = RunOptions(controller, seed, backend, settings, end_s, timeline, escort=escort)
    result = run(Path(scenario), Path(out), options)
    return json.loads((result.out_dir / "metrics.json").read_text())  # type: ignore[no-any-return]


def compare(
    scenario: Path,
    controllers: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    *,
    backend: str = "libsumo",
    settings: Settings | None = None,
    end_s: float | None = None,
    workers: int | None = None,
    timeline: bool = False,
    escort: str = "none",
) -> Comparison:
    settings = settings or Settings()
    jobs: list[Job] = [
        (
            str(scenario),
            c,
            s,
            backend,
            str(out_dir / f"{c}-seed{s}"),
            settings,
            end_s,
            timeline,
            escort,
        )
        for c in controllers
        for s in seeds
    ]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    runs: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_one, job) for job in jobs]
        for fut in tqdm(
            as_completed(futures), total=len(futures), desc="runs", unit="run", disable=None
        ):
            runs.append(fut.result())
    runs.sort(key=lambda r: (list(controllers).index(r["controller"]), r["seed"]))
    summary = {
        c: {k: stat([r[k] for r in runs if r["controller"] == c]) for k, _ in METRICS}
        for c in controllers
    }
    name = runs[0]["scenario"] if runs else scenario.stem
    return Comparison(name, tuple(controllers), tuple(seeds), runs, summary)


def table(comparison: Comparison) -> str:
    """The comparison as a plain-text table, mean ± std over seeds."""
    head = ["controller", *(label for _, label in METRICS)]
    rows = [
        [c, *(str(comparison.summary[c][k]) for k, _ in METRICS)] for c in comparison.controllers
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write(comparison: Comparison, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "compare.json"
    path.write_text(json.dumps(comparison.to_json(), indent=2) + "\n")
    return path
