"""Real-city benchmark: published SUMO scenarios, each exactly as its authors left it.

Every scenario under ``../shared/scenarios/real/`` (each folder's ``.sumocfg``) runs under
``fixed`` (the city's own programs, untouched), ``sumo-actuated`` (SUMO's actuated logic on
the city's phases), ``maxpressure`` and ``adaptive``, on the same seeds, with plain ``sumo``
(no TraCI) alongside: ``fixed`` must equal plain sumo within 1 % with zero signal writes, and
``adaptive`` is judged against the best of the three baselines (target <= 0.85).

The escort case adds one ambulance to the city's demand (a configuration written into the
bench's output folder that loads the scenario's own files by absolute path, plus one route
file): a vType of class ``emergency`` departing at ``AMBULANCE_DEPART_S`` on the shortest
route between two edges of the net that passes the most signals (at least
``MIN_ESCORT_SIGNALS``), chosen from the net alone. It runs under ``adaptive --escort
corridor`` and ``--escort local``; the runner also runs the same seed without the escort
for the civilian delay. Targets: <= 1.2 x free flow, no stop, no red, civilian delay <= +5 %.

Each run is ``citybrain sim run`` in a subprocess importing a snapshot of the package taken at
the start (see ``bench/unseen.py``).

    python bench/real.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sumolib
from tqdm import tqdm
from unseen import code_fingerprint, run_one, snapshot

from citybrain.sim.benchreport import delay_chart, machine, write_section
from citybrain.sim.plain import run_plain
from citybrain.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "scenarios" / "real"
BEGIN, END = "<!-- real-bench:begin -->", "<!-- real-bench:end -->"
CONTROLLERS = ("fixed", "sumo-actuated", "maxpressure", "adaptive")
BASELINES = ("fixed", "sumo-actuated", "maxpressure")
TARGET = 0.85
FIDELITY = 0.01
AMBULANCE_DEPART_S = 300.0
MIN_ESCORT_SIGNALS = 8


@dataclass(frozen=True, slots=True)
class Run:
    scenario: str
    seed: int
    runner: str
    delay_s: float | None
    wall_s: float
    error: str | None = None
    writes: int | None = None
    findings: int | None = None
    emergency: dict[str, Any] | None = None


def scenario_configs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*/*.sumocfg"))


def escort_route(cfg: Path) -> tuple[list[str], int]:
    """The shortest emergency route between two edges that passes the most signals."""
    net = sumolib.net.readNet(str(load_scenario(cfg).net_file))
    usable = [
        e for e in net.getEdges()
        if e.getFunction() == "" and e.allows("emergency") and e.getLength() > 30
    ]
    starts = sorted((e for e in usable if not e.getIncoming()), key=lambda e: e.getID())
    ends = sorted((e for e in usable if not e.getOutgoing()), key=lambda e: e.getID())
    best: tuple[int, float, list[str]] = (0, 0.0, [])
    for a in starts:
        for b in ends:
            path, cost = net.getShortestPath(a, b, vClass="emergency")
            if not path:
                continue
            signals = len({
                e.getToNode().getID() for e in path if e.getToNode().getType() == "traffic_light"
            })
            if (signals, -cost) > (best[0], -best[1] if best[2] else float("-inf")):
                best = (signals, cost, [e.getID() for e in path])
    return best[2], best[0]


def escort_config(cfg: Path, out: Path) -> tuple[Path, int]:
    """A configuration: the scenario's files by absolute path, plus one ambulance."""
    scenario = load_scenario(cfg)
    route, signals = escort_route(cfg)
    if signals < MIN_ESCORT_SIGNALS:
        raise SystemExit(f"{cfg}: no route passes {MIN_ESCORT_SIGNALS} signals (best {signals})")
    out.mkdir(parents=True, exist_ok=True)
    amb = out / "ambulance.rou.xml"
    amb.write_text(
        "<routes>\n"
        '    <vType id="ambulance" vClass="emergency" guiShape="emergency"/>\n'
        f'    <vehicle id="ambulance" type="ambulance" depart="{AMBULANCE_DEPART_S:g}">\n'
        f'        <route edges="{" ".join(route)}"/>\n'
        "    </vehicle>\n</routes>\n",
        encoding="utf-8",
    )
    root = ET.parse(cfg).getroot()
    for elem in root.iter():
        key = elem.tag
        if key in ("net-file", "route-files", "additional-files"):
            files = [str(p) for p in {
                "net-file": (scenario.net_file,),
                "route-files": (*scenario.route_files, amb),
                "additional-files": scenario.additional_files,
            }[key]]
            elem.set("value", ",".join(files))
        elif key == "log" or key.endswith("-output"):
            elem.set("value", str(out / Path(elem.get("value", "x")).name))
    if root.find(".//route-files") is None:
        raise SystemExit(f"{cfg}: no route-files to add the ambulance to")
    new = out / f"{scenario.name}-ambulance.sumocfg"
    ET.ElementTree(root).write(new, encoding="utf-8", xml_declaration=True)
    return new, signals


def one(cfg: Path, runner: str, seed: int, out: Path, code: Path, escort: str = "") -> Run:
    """One run of ``runner`` (plain sumo, or a controller; ``escort``: that escort mode)."""
    name = cfg.parent.name
    if runner == "plain":
        start = time.perf_counter()
        try:
            summary = run_plain(cfg, out, seed)
            return Run(name, seed, runner, summary.mean_delay_s, time.perf_counter() - start)
        except Exception as exc:
            return Run(name, seed, runner, None, time.perf_counter() - start, str(exc))
    res = run_one(cfg, runner, seed, out, code, extra=["--escort", escort] if escort else [])
    if res.error:
        return Run(name, seed, runner, None, res.wall_s, res.error)
    metrics = json.loads((out / "metrics.json").read_text())
    findings = metrics.get("monitor_findings", {}).get("total")
    emergency = metrics["emergency"][0] if escort and metrics["emergency"] else None
    return Run(name, seed, runner, res.delay_s, res.wall_s, None, metrics["signal_writes"],
               findings, emergency)


def _delays(runs: list[Run], scenario: str, runner: str) -> list[float]:
    return [r.delay_s for r in runs
            if r.scenario == scenario and r.runner == runner and r.delay_s is not None]


def _ms(xs: list[float]) -> str:
    if not xs:
        return "failed"
    return f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.1f}"


def verdict(runs: list[Run], scenario: str, seeds: list[int]) -> dict[str, Any]:
    complete = {c: xs for c in CONTROLLERS if len(xs := _delays(runs, scenario, c)) == len(seeds)}
    base = {c: statistics.fmean(xs) for c, xs in complete.items() if c in BASELINES}
    best = min(base, key=base.__getitem__) if base else None
    ratio = None
    if best and "adaptive" in complete and base[best] > 0:
        ratio = statistics.fmean(complete["adaptive"]) / base[best]
    fidelity = []
    for s in seeds:
        key = (scenario, s)
        plain = [r.delay_s for r in runs if (r.scenario, r.seed, r.runner) == (*key, "plain")]
        fixed = [r for r in runs if (r.scenario, r.seed, r.runner) == (scenario, s, "fixed")]
        if plain and plain[0] and fixed and fixed[0].delay_s is not None:
            fidelity.append(abs(fixed[0].delay_s / plain[0] - 1.0))
    writes = [r.writes for r in runs if r.scenario == scenario and r.runner == "fixed"]
    findings = [r.findings for r in runs if r.scenario == scenario and r.runner == "fixed"]
    return {
        "best": best, "ratio": ratio, "met": None if ratio is None else ratio <= TARGET,
        "fidelity_max": max(fidelity) if len(fidelity) == len(seeds) else None,
        "fixed_writes": writes, "fixed_findings": findings,
    }


def section(command: str, info: dict[str, Any], runs: list[Run], scenarios: list[str],
            seeds: list[int], escorts: dict[str, int], code: str) -> str:
    runners = ["plain", *CONTROLLERS]
    head = ["scenario", *runners, "best baseline", "adaptive / best", f"≤ {TARGET}",
            "fixed vs plain (max)", "fixed writes", "city-plan findings (fixed, per seed)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in scenarios:
        v = verdict(runs, s, seeds)
        ok = "—" if v["met"] is None else ("yes" if v["met"] else "**no**")
        fid = v["fidelity_max"]
        lines.append("| " + " | ".join([
            f"[{s}](bench/charts/real-{s}.png)", *[_ms(_delays(runs, s, c)) for c in runners],
            v["best"] or "—", "—" if v["ratio"] is None else f"{v['ratio']:.2f}", ok,
            "—" if fid is None else f"{100 * fid:.2f} %" + (" ✓" if fid <= FIDELITY else " **✗**"),
            ", ".join(map(str, v["fixed_writes"])),
            ", ".join(str(f) for f in v["fixed_findings"]),
        ]) + " |")
    esc = ["| scenario | mode | seed | signals on route | travel / free flow | stops | ran red | "
           "civilian delay change | met |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in runs if r.runner.startswith("escort")),
                    key=lambda r: (r.scenario, r.runner, r.seed)):
        mode = r.runner.removeprefix("escort-")
        e = r.emergency
        if r.error or not e:
            esc.append(f"| {r.scenario} | {mode} | {r.seed} | {escorts.get(r.scenario, '—')} | "
                       f"failed: {r.error} | | | | **no** |")
            continue
        ratio, change = e.get("ratio_to_free_flow"), e.get("civilian_delay_change")
        met = (ratio is not None and ratio <= 1.2 and e["stops"] == 0 and e["ran_red"] == 0
               and change is not None and change <= 0.05)
        esc.append(
            f"| {r.scenario} | {mode} | {r.seed} | {escorts.get(r.scenario, '—')} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} | {e['stops']} | {e['ran_red']} | "
            f"{'—' if change is None else f'{100 * change:+.1f} %'} | "
            f"{'yes' if met else '**no**'} |"
        )
    failed = [r for r in runs if r.error]
    parts = [
        BEGIN,
        "## Real cities: published scenarios as their authors left them",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['platform']}, {info['cores']} cores, Python {info['python']}, "
        f"SUMO {info['sumo']}, {info['date']}; code {info['code']}; every run imported one "
        f"snapshot of the package (sources fingerprint `{code}`).",
        "",
        "RESCO's average delay (s), mean ± sample std over seeds "
        f"{', '.join(map(str, seeds))}, each scenario's own window and files (outputs "
        "redirected into the run folder). `plain` is the `sumo` binary with the same "
        "configuration, seed and flags and no TraCI; `fixed` runs the city's own programs "
        f"untouched and must equal it within {100 * FIDELITY:g} % with zero signal writes. "
        "`sumo-actuated` is SUMO's actuated logic installed on the city's phases. "
        f"`adaptive / best`: ratio of means against the best of {', '.join(BASELINES)}; "
        f"target ≤ {TARGET}. The last column counts what the signal monitor found in the "
        "city's own programs against citybrain's envelope rules (reported, not failed).",
        "",
        *lines,
        "",
        "Escort in the city: one ambulance added to the demand (departing at "
        f"{AMBULANCE_DEPART_S:g} s on the shortest route through the most signals, chosen "
        "from the net), `adaptive --escort MODE`; the civilian delay is compared with "
        "the same seed without the escort. Targets: ≤ 1.2 x free flow, no stop, no red, "
        "civilian delay ≤ +5 %.",
        "",
        *esc,
        "",
        "Charts: " + " · ".join(f"[{s}](bench/charts/real-{s}.png)" for s in scenarios),
    ]
    if failed:
        parts += ["", "Failed runs:",
                  *[f"- {r.scenario} seed {r.seed} {r.runner}: {r.error}" for r in failed]]
    return "\n".join([*parts, END, ""])


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--real", type=Path, default=REAL, help="folder of scenario folders")
    p.add_argument("--seeds", type=lambda t: [int(v) for v in _csv(t)], default=[1, 2, 3])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "real")
    p.add_argument("-j", "--jobs", type=int, default=2, help="runs at once (default 2)")
    p.add_argument("--escort-modes", type=_csv, default=["corridor", "local"],
                   help="escort modes of the ambulance case (none: skip it)")
    p.add_argument("--write", type=Path, help="markdown file to write the section into")
    args = p.parse_args()
    configs = scenario_configs(args.real)
    if not configs:
        p.error(f"no scenario (*/*.sumocfg) under {args.real}")
    command = shlex.join(["python", *sys.argv])
    out: Path = args.out.resolve()
    info = machine(ROOT)
    code_dir = out / "code"
    fingerprint = snapshot(code_dir)
    escorts: dict[str, int] = {}
    jobs: list[tuple[Path, str, int, Path, str]] = []
    for cfg in configs:
        name = cfg.parent.name
        for seed in args.seeds:
            for runner in ("plain", *CONTROLLERS):
                dest = out / "runs" / name / f"seed{seed}" / runner
                jobs.append((cfg, runner, seed, dest, ""))
        modes = [m for m in args.escort_modes if m != "none"]
        if modes:
            esc_cfg, escorts[name] = escort_config(cfg, out / "scenarios" / name)
            for mode in modes:
                for seed in args.seeds:
                    jobs.append((esc_cfg, "adaptive", seed,
                                 out / "runs" / name / f"seed{seed}" / f"escort-{mode}", mode))

    def task(job: tuple[Path, str, int, Path, str]) -> Run:
        cfg, runner, seed, dest, escort = job
        res = one(cfg, runner, seed, dest, code_dir, escort)
        if escort:  # named by the scenario it adds the ambulance to
            res = Run(dest.parents[1].name, seed, f"escort-{escort}", res.delay_s, res.wall_s,
                      res.error, res.writes, res.findings, res.emergency)
        return res

    runs: list[Run] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool, tqdm(
        total=len(jobs), unit="run"
    ) as bar:
        for res in pool.map(task, jobs):
            bar.set_description(f"{res.scenario} seed {res.seed} {res.runner}")
            if res.error:
                tqdm.write(f"{res.scenario} seed {res.seed} {res.runner}: {res.error}")
            runs.append(res)
            bar.update()
    names = [c.parent.name for c in configs]
    text = section(command, info, runs, names, args.seeds, escorts, fingerprint)
    print(text)
    (out / "results.json").write_text(json.dumps({
        "command": command, "machine": info, "code": code_fingerprint(code_dir),
        "verdicts": {n: verdict(runs, n, args.seeds) for n in names},
        "escort_signals": escorts, "runs": [asdict(r) for r in runs],
    }, indent=2) + "\n")
    if args.write:
        for n in names:
            delays = {c: _delays(runs, n, c) for c in ("plain", *CONTROLLERS)}
            delay_chart(ROOT / "bench" / "charts" / f"real-{n}.png", delays,
                        f"{n}: seeds {', '.join(map(str, args.seeds))} (± 1 std)")
        write_section(args.write, BEGIN, END, text)
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
