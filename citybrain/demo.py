"""``citybrain demo``: the arterial corridor under fixed, actuated and adaptive control."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from citybrain.sim.compare import compare, table, write
from citybrain.sim.library import build_scenario, load_spec
from citybrain.sim.plots import comparison_chart, phase_timeline

DEMO_CONTROLLERS = ("fixed", "actuated", "adaptive")
PEAK_WINDOW = (1500.0, 2100.0)


def run_demo(out: Path, seeds: Sequence[int]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    print(f"building the arterial scenario in {out / 'scenario'} ...")
    cfg = build_scenario(load_spec("arterial"), out / "scenario", seed=1)
    print(f"running {', '.join(DEMO_CONTROLLERS)} on seeds {', '.join(map(str, seeds))} ...")
    comparison = compare(cfg, DEMO_CONTROLLERS, seeds, out / "runs", timeline=True)
    print()
    print(table(comparison))
    fixed = comparison.summary["fixed"]["mean_delay_s"].mean
    if fixed > 0:
        for name in DEMO_CONTROLLERS[1:]:
            ratio = comparison.summary[name]["mean_delay_s"].mean / fixed
            print(f"{name} / fixed mean delay: {ratio:.2f}")
    path = write(comparison, out)
    chart = comparison_chart(comparison, out / "compare.png")
    seed = seeds[0]
    timelines = {
        name: json.loads((out / "runs" / f"{name}-seed{seed}" / "timeline.json").read_text())
        for name in ("fixed", "adaptive")
    }
    timeline = phase_timeline(
        timelines,
        out / "timeline.png",
        PEAK_WINDOW,
        title=f"arterial, seed {seed}: signal phases at the peak",
    )
    print(f"\nwrote {path}\nchart: {chart}\nphase timeline: {timeline}")
    return 0
