"""Fault drills of SUMO-in-the-loop on a RESCO map: what each fault costs, and that nothing
unsafe is ever shown.

One private Mosquitto; the controller in ``citybrain control serve`` processes; SUMO as the
field through a cabinet per signal (``citybrain sim run --field``, lockstep). The same seed
runs in-process, undisturbed in the field, and under each drill of ``sim/drills.py``:

    python bench/field_drills.py                         # grid4x4, seed 1, adaptive
    python bench/field_drills.py --map arterial4x4 --drills none,kill,faults
    python bench/field_drills.py --write BENCHMARKS.md   # update its section

Results (``results.json`` and a chart) go to ``--out`` (default ``bench/out/field-drills``).
Exit status 1 if any drill showed an unsafe state or failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESCO = ROOT.parent / "shared" / "scenarios" / "resco"
BEGIN, END = "<!-- field-drills-bench:begin -->", "<!-- field-drills-bench:end -->"


def main(argv: list[str] | None = None) -> int:
    from citybrain.mqtt.brokers import private_broker
    from citybrain.settings import load_settings
    from citybrain.sim.benchreport import machine, write_section
    from citybrain.sim.drills import DRILLS, BrokerHooks, DrillSetup, run_drill
    from citybrain.sim.runner import RunOptions, run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--map", default="grid4x4", help="a RESCO map (../shared/scenarios/resco)")
    p.add_argument("--scenario", type=Path, help="any .sumocfg instead of a RESCO map")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--controller", default="adaptive")
    p.add_argument("--drills", default=",".join(DRILLS))
    p.add_argument("--strike", type=float, default=1200.0, help="simulated second of the fault")
    p.add_argument("--restart-after", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "field-drills")
    p.add_argument("--write", type=Path, help="update the drills section of this markdown file")
    args = p.parse_args(argv)
    scenario = args.scenario or RESCO / args.map / f"{args.map}.sumocfg"
    if not scenario.is_file():
        p.error(f"no scenario at {scenario}")
    drills = [d.strip() for d in args.drills.split(",") if d.strip()]
    unknown = [d for d in drills if d not in DRILLS]
    if unknown:
        p.error(f"unknown drill {unknown[0]!r}; choose from {', '.join(DRILLS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "citybrain.toml"
    config.write_text("# the drills' settings: the embedded defaults\n")
    settings = load_settings(config)
    info = machine(ROOT)
    rows: list[dict[str, Any]] = []
    wall = time.perf_counter()
    alone = run(
        scenario,
        args.out / "in-process",
        RunOptions(args.controller, args.seed, settings=settings),
    ).metrics
    print(f"in-process {args.controller}: mean delay {alone.mean_delay_s:.2f} s", flush=True)
    failed = False
    with private_broker(args.out / "broker") as broker:
        hooks = BrokerHooks(broker.stop, broker.start)
        for drill in drills:
            setup = DrillSetup(
                scenario,
                args.controller,
                broker.url,
                args.out / drill,
                seed=args.seed,
                config=config,
                strike_s=args.strike,
                restart_after_s=args.restart_after,
                broker=hooks,
            )
            try:
                r = run_drill(setup, drill)
            except Exception as exc:  # a drill that fails is reported, the others still run
                print(f"{drill}: FAILED: {exc}", file=sys.stderr, flush=True)
                rows.append({"drill": drill, "error": str(exc)})
                failed = True
                continue
            f = r.field
            row = {
                "drill": drill,
                "mean_delay_s": r.metrics.mean_delay_s,
                "vs_undisturbed": None,
                "unsafe_states": f["unsafe_states"],
                "monitor_refusals": f["monitor_refusals"],
                "fallbacks": f["fallbacks"],
                "fallback_after_s": f["fallback_after_s"],
                "missed_deadlines": f["missed_deadlines"],
                "commands_shown": f["commands_shown"],
                "latency_ms": f["latency_ms"],
                "injected_faults": f["injected_faults"],
                "holders_at_end": f["holders_at_end"],
                "wall_s": r.wall_s,
            }
            failed = failed or f["unsafe_states"] != 0
            rows.append(row)
            print(
                f"{drill}: mean delay {row['mean_delay_s']:.2f} s, unsafe {row['unsafe_states']}, "
                f"refused {row['monitor_refusals']}, fallbacks {row['fallbacks']}, "
                f"wall {r.wall_s:.0f} s",
                flush=True,
            )
    base = next((r for r in rows if r["drill"] == "none" and "error" not in r), None)
    for r in rows:
        if base is not None and "error" not in r:
            r["vs_undisturbed"] = r["mean_delay_s"] / base["mean_delay_s"]
    cmd = "python bench/field_drills.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "command": cmd.strip(),
        "machine": info,
        "scenario": str(scenario),
        "seed": args.seed,
        "controller": args.controller,
        "strike_s": args.strike,
        "restart_after_s": args.restart_after,
        "in_process_delay_s": alone.mean_delay_s,
        "field_equals_in_process": base is not None and base["mean_delay_s"] == alone.mean_delay_s,
        "drills": rows,
        "wall_s": time.perf_counter() - wall,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    chart = _chart(rows, args.out / "field-drills.png", scenario.stem, alone.mean_delay_s)
    text = _section(result, chart)
    print(text)
    if args.write is not None:
        charts = ROOT / "bench" / "charts"
        charts.mkdir(exist_ok=True)
        final = charts / "field-drills.png"
        final.write_bytes(chart.read_bytes())
        write_section(args.write, BEGIN, END, _section(result, final.relative_to(ROOT)))
    return 1 if failed else 0


def _chart(rows: list[dict[str, Any]], path: Path, name: str, alone: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(1.2 * len(ok) + 2, 4))
    colors = ["#d62728" if r["unsafe_states"] else "#1f77b4" for r in ok]
    ax.bar([r["drill"] for r in ok], [r["mean_delay_s"] for r in ok], color=colors)
    ax.axhline(alone, color="#7f7f7f", linestyle="--", label="in-process, undisturbed")
    ax.set_ylabel("mean delay (s)")
    ax.set_title(f"{name}: field drills (red: an unsafe state was shown)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _section(result: dict[str, Any], chart: Path) -> str:
    m = result["machine"]
    lines = [
        BEGIN,
        "## Field drills (SUMO-in-the-loop)",
        "",
        f"Command: `{result['command']}`. Machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['platform']}, Python {m['python']}, SUMO {m['sumo']}; code {m['code']}, "
        f"{m['date']}.",
        "",
        f"{Path(result['scenario']).stem}, seed {result['seed']}, `{result['controller']}` in a "
        f"`citybrain control serve` process, SUMO as the field through a cabinet per signal "
        f"(lockstep), a private Mosquitto, the embedded default settings (watchdog 5 s, "
        f"handover 2 s). Faults strike at {result['strike_s']:g} s; a restart comes "
        f"{result['restart_after_s']:g} s later. In-process run of the same seed: "
        f"{result['in_process_delay_s']:.2f} s; the undisturbed field run equals it: "
        f"{'yes' if result['field_equals_in_process'] else 'NO'}.",
        "",
        "| drill | mean delay (s) | vs undisturbed | unsafe states | refused | fallbacks | "
        "fallback after (s) | missed deadlines | commands shown | latency p50 / p99 (ms) | "
        "holders at end | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["drills"]:
        if "error" in r:
            lines.append(f"| {r['drill']} | failed: {r['error']} |" + " |" * 10)
            continue
        lat = r["latency_ms"]
        p50 = "-" if lat["p50"] is None else f"{lat['p50']:.1f}"
        p99 = "-" if lat["p99"] is None else f"{lat['p99']:.1f}"
        lines.append(
            f"| {r['drill']} | {r['mean_delay_s']:.2f} | {r['vs_undisturbed']:.2f} | "
            f"{r['unsafe_states']} | {r['monitor_refusals']} | {r['fallbacks']} | "
            f"{r['fallback_after_s']:g} | {r['missed_deadlines']} | {r['commands_shown']} | "
            f"{p50} / {p99} | {', '.join(r['holders_at_end']) or 'none'} | {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "Drills: `none` undisturbed; `kill` kill -9 of the service (no restart: the cabinets "
        "run their local plans, the city's program, to the end); `restart` the same, then a new "
        "service with the same id; `standby` a second service waits as hot standby and the "
        "first is killed; `broker-restart` Mosquitto stopped and started again; `faults` 5 % "
        "of the cabinets' messages lost, 5 % duplicated, 5 % of commands reordered, all run "
        "long; `clock-skew` every cabinet clock 7 s behind; `malformed` three malformed "
        "commands on every cabinet's command topic. Latency: the lockstep tick published to "
        "the command taken (wall clock, through the broker and the service).",
        "",
        f"![field drills]({chart})",
        END,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
