"""``citybrain demo``: the arterial corridor under fixed, actuated and adaptive control, its
ambulance without and with the green-wave escort, then parking settlement validated in SUMO."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from citybrain.escort_demo import run_escort_demo
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
    print(
        "\nescort: the arterial's ambulance under adaptive, without and with the corridor "
        f"(seeds {', '.join(map(str, seeds))}) ..."
    )
    run_escort_demo(out, seeds)
    return run_parking_demo(out / "parking")


def run_parking_demo(out: Path, vehicles: int = 40, seed: int = 1) -> int:
    """Leave first, pay later, checked in SUMO: simulated gate cameras -> gateways -> a
    private broker (Mosquitto where it is installed, else the embedded amqtt broker from
    PyPI) -> the settlement service -> a SQLite ledger, compared with SUMO's stop output.
    Non-zero when the report has a mismatch."""
    from citybrain.mqtt.brokers import find_mosquitto
    from citybrain.parking.validation import summary
    from citybrain.sim.parking_validate import run_parking_validation

    broker = "Mosquitto" if find_mosquitto() else "the embedded amqtt broker (no mosquitto)"
    print(f"\nparking: {vehicles} cars, three lots, a day and a half in SUMO, via {broker} ...")
    run = run_parking_validation(out, vehicles=vehicles, seed=seed)
    print(summary(run.report))
    for m in run.report.mismatches[:10]:
        print(f"  {m.kind}: {m.stay_id or m.session_id}: {m.detail}")
    if len(run.report.mismatches) > 10:
        print(f"  ... {len(run.report.mismatches) - 10} more in {run.report_json}")
    print(f"parking report: {run.report_txt}\nparking chart: {run.plot}")
    return 0 if run.report.ok else 1
