"""``citybrain demo``: the arterial corridor under fixed and actuated control, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from citybrain.sim.compare import compare, table, write
from citybrain.sim.library import build_scenario, load_spec
from citybrain.sim.plots import comparison_chart

DEMO_CONTROLLERS = ("fixed", "actuated")


def run_demo(out: Path, seeds: Sequence[int]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    print(f"building the arterial scenario in {out / 'scenario'} ...")
    cfg = build_scenario(load_spec("arterial"), out / "scenario", seed=1)
    print(f"running {', '.join(DEMO_CONTROLLERS)} on seeds {', '.join(map(str, seeds))} ...")
    comparison = compare(cfg, DEMO_CONTROLLERS, seeds, out / "runs")
    print()
    print(table(comparison))
    fixed = comparison.summary["fixed"]["mean_delay_s"].mean
    actuated = comparison.summary["actuated"]["mean_delay_s"].mean
    if fixed > 0:
        print(f"\nactuated / fixed mean delay: {actuated / fixed:.2f}")
    path = write(comparison, out)
    chart = comparison_chart(comparison, out / "compare.png")
    print(f"\nwrote {path}\nchart: {chart}")
    return 0
