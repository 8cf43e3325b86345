"""The ``citybrain`` command: sim, control, escort, cabinet, parking and demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from citybrain.errors import CitybrainError

if TYPE_CHECKING:
    from citybrain.sim.fieldloop import FieldFaults, FieldOptions

Handler = Callable[[argparse.Namespace], int]


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected at least one name")
    return names


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("libsumo", "traci"),
        default="libsumo",
        help="libsumo (in-process, default) or traci (socket)",
    )
    p.add_argument("--config", type=Path, help="settings TOML (see configs/citybrain.toml)")
    p.add_argument(
        "--end", type=float, help="stop at this simulation time (default: the scenario's end)"
    )
    p.add_argument(
        "--escort",
        nargs="?",
        const="corridor",
        default="none",
        choices=("none", "local", "corridor"),
        help="escort emergency vehicles: corridor (green wave, the default of a bare --escort), "
        "local (green on approach, Opticom-style) or none",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citybrain", description="Smart traffic signal control, validated in SUMO."
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = top.add_parser("sim", help="run SUMO scenarios under our controllers")
    sim_cmds = sim.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")
    r = sim_cmds.add_parser("run", help="run one scenario under one controller")
    r.add_argument("scenario", type=Path, help="a SUMO .sumocfg")
    r.add_argument("--controller", default="fixed", help="controller name (citybrain control list)")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument(
        "--out", type=Path, help="output folder (default: runs/SCENARIO-CONTROLLER-seedN)"
    )
    r.add_argument(
        "--timeline",
        action="store_true",
        help="also write timeline.json and timeline.png (every signal's phases over time)",
    )
    _add_run_options(r)
    r.add_argument(
        "--field",
        metavar="BROKER_URL",
        help="SUMO-in-the-loop: SUMO is the field, a cabinet per signal on this broker; the "
        "controller runs in citybrain control serve (--controller is then unused)",
    )
    r.add_argument(
        "--clock",
        choices=("lockstep", "realtime"),
        default="lockstep",
        help="with --field: lockstep (default; each second waits for its commands) or "
        "realtime (one simulated second per wall second)",
    )
    r.add_argument("--topic-root", default="citybrain", help="with --field: first topic levels")
    r.add_argument("--username", help="with --field: the broker user hosting the cabinets")
    r.add_argument("--password")
    r.add_argument("--ca-file", help="with --field: CA certificate for mqtts:// brokers")
    r.add_argument(
        "--faults",
        help="with --field, a drill: faults at the cabinets' network interface, e.g. "
        "drop=0.05,duplicate=0.05,reorder=0.05,clock_offset_s=-7,seed=1",
    )
    r.set_defaults(handler=_sim_run)

    c = sim_cmds.add_parser("compare", help="compare controllers over seeds, in parallel")
    c.add_argument("scenario", type=Path, help="a SUMO .sumocfg")
    c.add_argument("--controllers", type=_names, default=["fixed", "actuated"])
    c.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    c.add_argument("--out", type=Path, help="output folder (default: runs/compare-SCENARIO)")
    c.add_argument("--workers", type=int, help="parallel processes (default: one per core)")
    _add_run_options(c)
    c.set_defaults(handler=_sim_compare)

    s = sim_cmds.add_parser("scenario", help="build a scenario of the built-in library")
    s.add_argument("name", nargs="?", help="single, arterial, grid, or a scenario TOML file")
    s.add_argument("--out", type=Path, help="output folder (default: scenarios/NAME)")
    s.add_argument("--seed", type=int, default=1, help="seed of the demand generator")
    s.set_defaults(handler=_sim_scenario)

    control = top.add_parser("control", help="controllers and intersection models")
    control_cmds = control.add_subparsers(
        dest="control_command", required=True, metavar="SUBCOMMAND"
    )
    lst = control_cmds.add_parser("list", help="list the controllers")
    lst.set_defaults(handler=_control_list)
    ins = control_cmds.add_parser(
        "inspect", help="show the intersection models of a net or scenario"
    )
    ins.add_argument("path", type=Path, help="a .net.xml or .sumocfg")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(handler=_control_inspect)

    from citybrain.field_cli import add_control_serve, add_escort

    add_control_serve(control_cmds)
    add_escort(top)
    from citybrain.cabinet_cli import add_cabinet

    add_cabinet(top)

    from citybrain.parking_cli import add_parser as add_parking

    add_parking(top)

    from citybrain.broker_cli import add_parser as add_broker

    add_broker(top)

    demo = top.add_parser(
        "demo", help="the arterial under fixed, actuated and adaptive control, escort, parking"
    )
    demo.add_argument("--out", type=Path, default=Path("citybrain-demo"))
    demo.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CitybrainError as exc:
        print(f"citybrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("citybrain: interrupted", file=sys.stderr)
        return 130


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from citybrain.settings import load_settings

    return load_settings(args.config)


def _field_options(args: argparse.Namespace) -> FieldOptions | None:
    if args.field is None:
        for flag in ("username", "password", "ca_file", "faults"):
            if getattr(args, flag) is not None:
                raise CitybrainError(f"--{flag.replace('_', '-')} needs --field")
        return None
    from citybrain.mqtt.address import BrokerSettings
    from citybrain.sim.fieldloop import FieldOptions

    try:
        broker = BrokerSettings.from_url(
            args.field, username=args.username, password=args.password, ca_file=args.ca_file
        )
    except ValueError as exc:
        raise CitybrainError(str(exc)) from None
    return FieldOptions(broker, args.clock, args.topic_root, faults=_faults(args.faults))


def _faults(text: str | None) -> FieldFaults:
    from citybrain.sim.fieldloop import FieldFaults

    if not text:
        return FieldFaults()
    names = {"drop", "duplicate", "reorder", "clock_offset_s", "seed"}
    values: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise CitybrainError(
                f"--faults: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}, "
                f"not {item!r}"
            )
        try:
            values[key] = float(value)
        except ValueError:
            raise CitybrainError(f"--faults: {key} must be a number, not {value!r}") from None
    seed = values.pop("seed", 0.0)
    if not (seed.is_integer() and seed >= 0):
        raise CitybrainError(f"--faults: seed must be a whole number >= 0, not {seed:g}")
    return FieldFaults(**values, seed=int(seed))


def _sim_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from citybrain.control.catalog import check_controller
    from citybrain.sim.runner import RunOptions, run
    from citybrain.sim.scenario import load_scenario

    field = _field_options(args)
    if field is None:
        check_controller(args.controller)
    scenario = load_scenario(args.scenario)
    settings = _settings(args)
    name = "field" if field is not None else args.controller
    out = args.out or Path("runs") / f"{scenario.name}-{name}-seed{args.seed}"
    end = min(args.end or scenario.end_s, scenario.end_s)
    bar = tqdm(
        total=round(end - scenario.begin_s), unit="s", desc=scenario.name, disable=None, leave=False
    )
    last = [scenario.begin_s]

    def progress(t: float) -> None:
        if t - last[0] >= 60 or t >= end:
            bar.update(round(t - last[0]))
            last[0] = t

    try:
        result = run(
            args.scenario,
            out,
            RunOptions(
                args.controller,
                args.seed,
                args.backend,
                settings,
                args.end,
                args.timeline,
                escort=args.escort,
                field=field,
            ),
            progress,
        )
    finally:
        bar.close()
    m = result.metrics
    if args.timeline:
        from citybrain.sim.plots import phase_timeline

        timeline = json.loads((result.out_dir / "timeline.json").read_text())
        begin, end_t = m.extra["window_s"]
        phase_timeline(
            {m.controller: timeline},
            result.out_dir / "timeline.png",
            (begin, end_t),
            title=f"{m.scenario} / {m.controller} / seed {m.seed}",
        )
    print(
        f"{m.scenario} / {m.controller} / seed {m.seed}: mean delay {m.mean_delay_s:.1f} s, "
        f"travel time {m.mean_travel_time_s:.1f} s, waiting {m.mean_waiting_time_s:.1f} s, "
        f"throughput {m.throughput_veh_per_h:.0f} veh/h "
        f"({m.vehicles.completed} completed, {m.vehicles.unfinished} unfinished, "
        f"{m.vehicles.never_departed} never departed); wall {m.wall_time_s:.1f} s"
    )
    for e in m.emergency:
        ff = f"{e.free_flow_time_s:.0f} s" if e.free_flow_time_s else "n/a"
        ratio = f" = {e.ratio_to_free_flow:.2f}x" if e.ratio_to_free_flow else ""
        civ = ""
        if e.civilian_delay_change is not None and e.escort != "none":
            civ = (
                f", civilian delay {e.civilian_delay_s:.1f} s vs "
                f"{e.civilian_delay_no_escort_s:.1f} s without escort "
                f"({100 * e.civilian_delay_change:+.1f} %)"
            )
        print(
            f"  emergency {e.id} (escort {e.escort}): travel {e.travel_time_s:.0f} s "
            f"(free flow {ff}{ratio}), stops {e.stops}, ran red {e.ran_red}{civ}"
        )
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in e.id)
        diagram = result.out_dir / f"timespace-{safe}.png"
        if diagram.is_file():
            print(f"  time-space diagram: {diagram}")
    print(f"wrote {result.out_dir / 'metrics.json'} and {result.out_dir / 'tripinfo.xml'}")
    f = m.extra.get("field")
    if isinstance(f, dict):
        lat = f["latency_ms"]
        p50 = "n/a" if lat["p50"] is None else f"{lat['p50']:.1f}"
        p99 = "n/a" if lat["p99"] is None else f"{lat['p99']:.1f}"
        print(
            f"field ({f['clock']}): {f['cabinets']} cabinets, {f['commands_shown']} commands "
            f"shown, {f['monitor_refusals']} refused, {f['fallbacks']} fallbacks, "
            f"{f['unsafe_states']} unsafe states, latency p50 {p50} ms p99 {p99} ms, "
            f"{f['missed_deadlines']} missed deadlines"
        )
        if f["unsafe_states"]:
            raise CitybrainError(f"{f['unsafe_states']} unsafe state(s) shown: see metrics.json")
    return 0


def _sim_compare(args: argparse.Namespace) -> int:
    from citybrain.control.catalog import check_controller
    from citybrain.sim.compare import compare, table, write
    from citybrain.sim.plots import comparison_chart
    from citybrain.sim.scenario import load_scenario

    for name in args.controllers:
        check_controller(name)
    if not args.seeds:
        raise CitybrainError("--seeds needs at least one seed")
    scenario = load_scenario(args.scenario)
    out = args.out or Path("runs") / f"compare-{scenario.name}"
    comparison = compare(
        args.scenario,
        args.controllers,
        args.seeds,
        out,
        backend=args.backend,
        settings=_settings(args),
        end_s=args.end,
        workers=args.workers,
        escort=args.escort,
    )
    print(table(comparison))
    path = write(comparison, out)
    chart = comparison_chart(comparison, out / "compare.png")
    print(f"wrote {path} and {chart}")
    return 0


def _sim_scenario(args: argparse.Namespace) -> int:
    from citybrain.sim.library import SCENARIOS, build_scenario, load_spec

    if args.name is None:
        print("built-in scenarios: " + ", ".join(SCENARIOS))
        return 0
    spec = load_spec(args.name)
    out = args.out or Path("scenarios") / Path(args.name).stem
    cfg = build_scenario(spec, out, seed=args.seed)
    print(f"wrote {cfg}")
    return 0


def _control_list(args: argparse.Namespace) -> int:
    from citybrain.control.catalog import CONTROLLERS

    for name in CONTROLLERS:
        print(name)
    return 0


def _control_inspect(args: argparse.Namespace) -> int:
    from citybrain.netmodel.net import intersections_from_net, read_net
    from citybrain.sim.runner import load

    if args.path.suffix == ".sumocfg":  # the programs SUMO runs for this scenario
        models = load(args.path).layout.intersections
    else:
        models = intersections_from_net(read_net(args.path))
    if not models:
        raise CitybrainError(f"{args.path}: the network has no traffic lights")
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": x.id,
                        "links": [[link.in_lane, link.out_lane] for link in x.links],
                        "phases": [p.state for p in x.phases],
                        "conflicts": [sorted(c) for c in x.conflicts],
                        "yellow_s": x.yellow_s,
                        "all_red_s": x.all_red_s,
                        "cycle_s": x.cycle_s,
                    }
                    for x in models
                ],
                indent=2,
            )
        )
        return 0
    for x in models:
        pairs = sum(len(c) for c in x.conflicts) // 2
        print(
            f"{x.id}: {len(x.links)} links, {len(x.in_lanes)} approach lanes, "
            f"{len(x.phases)} green phases, {pairs} conflicting pairs, cycle {x.cycle_s:g} s, "
            f"yellow {x.yellow_s:g} s, all-red {x.all_red_s:g} s"
        )
        for p in x.phases:
            print(f"  phase {p.index}: {p.state}  ({p.plan_duration_s:g} s in the plan)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from citybrain.demo import run_demo

    return run_demo(args.out, args.seeds)


if __name__ == "__main__":
    raise SystemExit(main())
