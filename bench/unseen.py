"""Unseen-scenario benchmark: controllers on nets and demand they were never developed on.

Every scenario is generated with SUMO's own tools, deterministically from ``--scenario-seed``:

- ``rand``: ``netgenerate --rand`` (40 growth iterations, 200-400 m links, two lanes,
  50 km/h), traffic lights where ``--tls.guess`` puts them;
- ``spider``: ``netgenerate --spider`` (5 or 6 arms, 3 or 4 rings, no centre node), traffic
  lights where ``--tls.guess`` puts them;
- ``grid``: an irregular ``netgenerate --grid`` (4-6 by 3-4 junctions, different spacing on
  the two axes, 2 or 3 lanes plus a turn lane), every junction signalized.

The seed picks the numbers within those ranges and seeds ``netgenerate`` and
``randomTrips.py``. Every signal runs the net's own program (netgenerate's default
``tlLogic``: nothing is tuned).

Demand: ``randomTrips.py`` with ``--fringe-factor 10`` (most trips start and end at the
edge of the net), trips at least 300 m long, routed and validated by ``duarouter``
(``--route-file --validate``). The insertion rate follows one rule for every net: a peak of
``PEAK_DENSITY`` vehicles per hour per lane-km of the net (``--insertion-density``), shaped
over the hour as a raised cosine from ``OFFPEAK`` of the peak at both ends to the peak in the
middle, in 12 slices of 5 minutes. The simulation runs ``DRAIN_S`` beyond the hour so the
peak's queues can clear. The level was set once from fixed-time runs only (see
``bench/README.md``); no controller's result was looked at to choose it.

Each run is ``citybrain sim run CFG --controller C --seed S``, one subprocess at a time by
default (``-j``), and reads ``mean_delay_s`` (RESCO's average delay) from ``metrics.json``.
A run that exits non-zero (for example, the signal monitor found a violation) is listed as
failed in the section, never dropped silently.

Others edit the controllers while a bench runs, so at the start the ``citybrain`` package is
copied to ``OUT/code`` and every run imports that copy (``--live``: the working tree); the
section states the sources' fingerprint.

    python bench/unseen.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sumolib
from tqdm import tqdm

from citybrain.sim.benchreport import delay_chart, machine, write_section

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- unseen-bench:begin -->", "<!-- unseen-bench:end -->"
CONTROLLERS = ("fixed", "sumo-actuated", "maxpressure", "adaptive")
BASELINES = ("fixed", "sumo-actuated", "maxpressure")
TARGET = 0.9
KINDS = ("rand", "spider", "grid")

PEAK_DENSITY = 90.0
"""Peak insertion rate, vehicles per hour per lane-km of the whole net (one rule, every net)."""
OFFPEAK = 0.3
"""Insertion rate at the start and the end of the hour, as a fraction of the peak."""
SLICES = 12
WINDOW_S = 3600
DRAIN_S = 600
FRINGE_FACTOR = "10"
MIN_TRIP_M = "300"


@dataclass(frozen=True, slots=True)
class Spec:
    """One generated scenario: netgenerate's arguments and the demand's shape."""

    name: str
    net_args: tuple[str, ...]
    seed: int
    window_s: int = WINDOW_S
    drain_s: int = DRAIN_S
    peak_density: float = PEAK_DENSITY
    slices: int = SLICES


@dataclass(frozen=True, slots=True)
class Built:
    name: str
    cfg: Path
    signals: int
    vehicles: int
    lane_km: float
    area_km2: float
    description: str


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    seed: int
    controller: str
    delay_s: float | None
    wall_s: float
    error: str | None = None
    code: str = ""
    """Fingerprint of the harness and controller sources when the run started."""


# --------------------------------------------------------------------------- scenarios


def specs(
    scenario_seed: int, kinds: list[str] | tuple[str, ...] = KINDS,
    peak_density: float = PEAK_DENSITY,
) -> list[Spec]:
    """The benchmark's scenarios for one seed: the seed picks every number, within ranges."""
    out = []
    for kind in kinds:
        rng = random.Random(f"{scenario_seed}:{kind}")
        if kind == "rand":
            args = [
                "--rand", "--rand.iterations", "40", "--rand.bidi-probability", "1",
                "--rand.min-distance", "200", "--rand.max-distance", "400",
                "--rand.min-angle", "50", "--rand.connectivity", "0.9",
                "--rand.neighbor-dist1", "0", "--rand.neighbor-dist2", "0",
                "--default.lanenumber", "2", "--tls.guess",
            ]
        elif kind == "spider":
            args = [
                "--spider", "--spider.arm-number", str(rng.choice((5, 6))),
                "--spider.circle-number", str(rng.choice((3, 4))),
                "--spider.space-radius", str(rng.randrange(140, 201, 10)),
                "--spider.omit-center", "--default.lanenumber", "2", "--tls.guess",
            ]
        elif kind == "grid":
            x, y = rng.choice((4, 5, 6)), rng.choice((3, 4))
            args = [
                "--grid", "--grid.x-number", str(x), "--grid.y-number", str(y),
                "--grid.x-length", str(rng.randrange(180, 321, 20)),
                "--grid.y-length", str(rng.randrange(140, 261, 20)),
                "--grid.attach-length", "200",
                "--default.lanenumber", str(rng.choice((2, 3))),
                "--turn-lanes", "1", "--turn-lanes.length", "40",
                "--default.junctions.type", "traffic_light",
            ]
        else:
            raise ValueError(f"unknown scenario kind {kind!r}; known: {', '.join(KINDS)}")
        out.append(Spec(kind, (*args, "--no-turnarounds", "--seed", str(scenario_seed)),
                        scenario_seed, peak_density=peak_density))
    return out


def tools_dir() -> Path:
    """SUMO's ``tools`` folder, from the ``eclipse-sumo`` package on PyPI (else SUMO_HOME)."""
    found = importlib.util.find_spec("sumo")
    if found is not None and found.origin:
        return Path(found.origin).resolve().parent / "tools"
    return Path(os.environ.get("SUMO_HOME", "/usr/share/sumo")) / "tools"


def profile(spec: Spec) -> list[float]:
    """Insertion density per slice: a raised cosine from OFFPEAK x peak to the peak and back."""
    levels = []
    for i in range(spec.slices):
        phase = (i + 0.5) / spec.slices
        shape = 0.5 * (1.0 - math.cos(2.0 * math.pi * phase))
        levels.append(round(spec.peak_density * (OFFPEAK + (1.0 - OFFPEAK) * shape), 3))
    return levels


def _check(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")


def build(spec: Spec, out: Path) -> Built:
    """Write ``NAME.net.xml``, ``NAME.rou.xml`` and ``NAME.sumocfg`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    net, trips, routes = (out / f"{spec.name}.{s}.xml" for s in ("net", "trips", "rou"))
    cfg = out / f"{spec.name}.sumocfg"
    _check([sumolib.checkBinary("netgenerate"), *spec.net_args, "--output-file", str(net)],
           "netgenerate")
    _check([
        sys.executable, str(tools_dir() / "randomTrips.py"), "--net-file", str(net),
        "--output-trip-file", str(trips), "--route-file", str(routes), "--validate",
        "--seed", str(spec.seed), "--fringe-factor", FRINGE_FACTOR,
        "--min-distance", MIN_TRIP_M, "--begin", "0", "--end", str(spec.window_s),
        "--prefix", f"{spec.name}_", "--insertion-density", *map(str, profile(spec)),
    ], "randomTrips.py")
    root = ET.Element("configuration")
    inputs = ET.SubElement(root, "input")
    ET.SubElement(inputs, "net-file", value=net.name)
    ET.SubElement(inputs, "route-files", value=routes.name)
    window = ET.SubElement(root, "time")
    ET.SubElement(window, "begin", value="0")
    ET.SubElement(window, "end", value=str(spec.window_s + spec.drain_s))
    ET.indent(root)
    ET.ElementTree(root).write(cfg, encoding="utf-8", xml_declaration=True)

    sumo_net = sumolib.net.readNet(str(net))
    (x0, y0, x1, y1) = sumo_net.getBoundary()
    lane_km = sum(e.getLength() * e.getLaneNumber() for e in sumo_net.getEdges()) / 1000.0
    vehicles = sum(1 for _ in ET.parse(routes).getroot().iter("vehicle"))
    args = list(spec.net_args)
    if "--seed" in args:  # the seed is stated once for the whole section
        del args[args.index("--seed"):args.index("--seed") + 2]
    description = " ".join(args)
    return Built(spec.name, cfg, len(sumo_net.getTrafficLights()), vehicles, lane_km,
                 (x1 - x0) * (y1 - y0) / 1e6, description)


# --------------------------------------------------------------------------- runs


def package_folders(base: Path = ROOT) -> dict[str, Path]:
    """The folders the ``citybrain`` package is made of under ``base``, by their place in it
    (``""``: the package itself, ``"control"``: ``citybrain.control``). A source tree maps them
    as pyproject's ``package-dir`` says (``control/`` is ``citybrain/control``); a snapshot
    (no ``pyproject.toml``) holds the package assembled in ``base/citybrain``."""
    pyproject = base / "pyproject.toml"
    if not pyproject.is_file():
        return {"": base / "citybrain"}
    setup = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]
    return {
        name.removeprefix("citybrain").removeprefix(".").replace(".", "/"): base / folder
        for name, folder in setup["package-dir"].items()
        if name == "citybrain" or name.startswith("citybrain.")
    }


def code_fingerprint(base: Path = ROOT) -> str:
    """SHA-256 (12 hex digits) of every ``.py`` and ``.toml`` of the ``citybrain`` package
    under ``base`` (see ``package_folders``), each named by its path in the installed package:
    a source tree and its snapshot have one fingerprint."""
    files = []
    for place, folder in package_folders(base).items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            inside = Path(place, Path(dirpath).relative_to(folder))
            files += [(str(Path("citybrain", inside)), f, Path(dirpath) / f)
                      for f in filenames if f.endswith((".py", ".toml"))]
    digest = hashlib.sha256()
    for folder_name, f, path in sorted(files):  # by folder, then by name within each
        digest.update(str(Path(folder_name, f).relative_to("citybrain")).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def snapshot(dest: Path) -> str:
    """Copy the ``citybrain`` package to ``dest``, assembled as it is installed
    (``dest/citybrain/control`` and so on); return its fingerprint.

    Others edit the controllers while a bench runs; every run imports this copy instead
    (``PYTHONPATH``), so all runs of one table run the same code."""
    if dest.exists():
        shutil.rmtree(dest)
    for place, folder in sorted(package_folders().items()):  # the package itself first
        shutil.copytree(folder, dest / "citybrain" / place, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return code_fingerprint(dest)


def run_one(
    cfg: Path, controller: str, seed: int, out: Path, code: Path | None = None,
    extra: list[str] | None = None,
) -> Result:
    """One ``citybrain sim run`` (``extra``: more of its options); with ``code``, importing the
    package from that snapshot."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(code), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "citybrain.cli", "sim", "run", str(cfg),
           "--controller", controller, "--seed", str(seed), "--out", str(out), *(extra or [])]
    fingerprint = code_fingerprint(code if code is not None else ROOT)
    name = cfg.name.removesuffix(".sumocfg")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env,
                              cwd=code if code is not None else None)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            return Result(name, seed, controller, None, wall, f"exit {proc.returncode}: {tail}",
                          fingerprint)
        metrics = json.loads((out / "metrics.json").read_text())
        delay = float(metrics["mean_delay_s"])
        return Result(name, seed, controller, delay, wall, None, fingerprint)
    except Exception as exc:  # a broken output file is reported, not fatal to the bench
        wall = time.perf_counter() - start
        return Result(name, seed, controller, None, wall, f"{type(exc).__name__}: {exc}",
                      fingerprint)


def run_all(
    jobs: list[tuple[Built, str, int]], out: Path, workers: int, code: Path | None
) -> Iterator[Result]:
    def task(job: tuple[Built, str, int]) -> Result:
        built, controller, seed = job
        return run_one(built.cfg, controller, seed,
                       out / "runs" / built.name / f"seed{seed}" / controller, code)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        yield from pool.map(task, jobs)


# --------------------------------------------------------------------------- report


def _delays(results: list[Result], scenario: str, controller: str) -> list[float]:
    return [r.delay_s for r in results
            if r.scenario == scenario and r.controller == controller and r.delay_s is not None]


def _ms(xs: list[float]) -> str:
    if not xs:
        return "failed"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.1f} ± {sd:.1f}"


def verdicts(
    results: list[Result], scenarios: list[Built], controllers: list[str], seeds: list[int]
) -> dict[str, dict[str, Any]]:
    """Per scenario: adaptive's mean over the best baseline's mean, on complete seed sets only."""
    out: dict[str, dict[str, Any]] = {}
    for b in scenarios:
        complete = {c: xs for c in controllers
                    if len(xs := _delays(results, b.name, c)) == len(seeds)}
        base = {c: statistics.fmean(xs) for c, xs in complete.items() if c in BASELINES}
        best = min(base, key=base.__getitem__) if base else None
        ratio = None
        if best is not None and "adaptive" in complete and base[best] > 0:
            ratio = statistics.fmean(complete["adaptive"]) / base[best]
        missing = [c for c in BASELINES if c in controllers and c not in complete]
        out[b.name] = {"best": best, "ratio": ratio, "met": None if ratio is None or missing
                       else ratio <= TARGET, "missing_baselines": missing}
    return out


def table(
    results: list[Result], scenarios: list[Built], controllers: list[str], seeds: list[int]
) -> str:
    v = verdicts(results, scenarios, controllers, seeds)
    head = ["scenario", "signals", "vehicles", *controllers, "best baseline",
            "adaptive / best", f"≤ {TARGET}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in scenarios:
        cells = [_ms(_delays(results, b.name, c)) for c in controllers]
        ratio, best, met = v[b.name]["ratio"], v[b.name]["best"], v[b.name]["met"]
        ok = "—" if met is None else ("yes" if met else "**no**")
        lines.append("| " + " | ".join([
            f"[{b.name}](bench/charts/unseen-{b.name}.png)", str(b.signals), str(b.vehicles),
            *cells, best or "—", "—" if ratio is None else f"{ratio:.2f}", ok,
        ]) + " |")
    return "\n".join(lines)


def charts(
    results: list[Result], scenarios: list[Built], controllers: list[str], folder: Path
) -> list[Path]:
    """One bar chart per scenario: mean delay per controller, error bars one std."""
    written = []
    for b in scenarios:
        delays = {c: _delays(results, b.name, c) for c in controllers}
        if not any(delays.values()):
            continue
        seeds = sorted({r.seed for r in results if r.scenario == b.name and r.delay_s is not None})
        title = (f"unseen {b.name} ({b.signals} signals): seeds "
                 f"{', '.join(map(str, seeds))} (± 1 std)")
        written.append(delay_chart(folder / f"unseen-{b.name}.png", delays, title))
    return written


def section(
    command: str, info: dict[str, Any], results: list[Result], scenarios: list[Built],
    controllers: list[str], seeds: list[int], scenario_seed: int,
) -> str:
    v = verdicts(results, scenarios, controllers, seeds)
    failed = [r for r in results if r.error]
    codes = sorted({r.code for r in results})
    if len(codes) == 1:
        code_note = (f"Every run imported one snapshot of the package taken at the start "
                     f"(sources fingerprint `{codes[0]}`).")
    else:
        code_note = ("**The sources changed during the bench** (others were editing them): "
                     + "; ".join(f"`{c}`: " + ", ".join(
                         f"{r.scenario}/{r.seed}/{r.controller}" for r in results if r.code == c)
                                 for c in codes) + ". Rerun on a quiet tree before trusting it.")
    judged = [x["met"] for x in v.values() if x["met"] is not None]
    summary = (f"target met on {sum(judged)} of {len(scenarios)} scenarios"
               if judged else "target not measured (adaptive or a baseline missing)")
    parts = [
        BEGIN,
        "## Unseen scenarios: nets, demand and signal programs no controller was developed on",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['platform']}, {info['cores']} cores, Python {info['python']}, "
        f"SUMO {info['sumo']}, {info['date']}; code {info['code']}. {code_note}",
        "",
        f"Scenarios generated by `bench/unseen.py` from scenario seed {scenario_seed} with "
        "SUMO's `netgenerate` (each net's own default signal programs, untuned) and "
        "`randomTrips.py` (fringe factor 10, routed and validated by duarouter). Demand rule, "
        f"the same for every net: a peak of {PEAK_DENSITY:g} veh/h per lane-km of the net, a "
        f"raised cosine from {OFFPEAK:g} x peak to the peak and back over {WINDOW_S} s, then "
        f"{DRAIN_S} s without new demand. RESCO's average delay (s), mean ± sample std over "
        f"seeds {', '.join(map(str, seeds))}; `adaptive / best` is the ratio of means against "
        f"the best of {', '.join(c for c in BASELINES if c in controllers)}. Issue 3's target: "
        f"≤ {TARGET}; {summary}.",
        "",
        "| scenario | net (netgenerate options) | lane-km | area km² |",
        "|---|---|---|---|",
        *[f"| {b.name} | `{b.description}` | {b.lane_km:.1f} | {b.area_km2:.1f} |"
          for b in scenarios],
        "",
        table(results, scenarios, controllers, seeds),
        "",
        "Charts: " + " · ".join(f"[{b.name}](bench/charts/unseen-{b.name}.png)"
                                for b in scenarios),
    ]
    if failed:
        parts += ["", "Failed runs:",
                  *[f"- {r.scenario} seed {r.seed} {r.controller}: {r.error}" for r in failed]]
    else:
        parts += ["", f"All {len(results)} runs exited 0 (no signal-monitor violation)."]
    return "\n".join([*parts, END, ""])


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--scenario-seed", type=int, default=1)
    p.add_argument("--scenarios", type=_csv, default=list(KINDS),
                   help=f"which generated scenarios ({', '.join(KINDS)})")
    p.add_argument("--controllers", type=_csv, default=list(CONTROLLERS))
    p.add_argument("--seeds", type=lambda t: [int(v) for v in _csv(t)], default=[1, 2, 3])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "unseen")
    p.add_argument("-j", "--jobs", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--write", type=Path, help="markdown file to write the section into")
    p.add_argument("--live", action="store_true",
                   help="run the working tree's package, not a snapshot taken at the start")
    p.add_argument("--build-only", action="store_true", help="generate the scenarios, run none")
    p.add_argument("--peak-density", type=float, default=PEAK_DENSITY,
                   help="peak veh/h per lane-km (to calibrate the rule; the bench uses the "
                   "default)")
    args = p.parse_args()
    for kind in args.scenarios:
        if kind not in KINDS:
            p.error(f"unknown scenario {kind!r}; known: {', '.join(KINDS)}")
    command = shlex.join(["python", *sys.argv])
    out: Path = args.out.resolve()

    info = machine(ROOT)
    scenarios = []
    for spec in specs(args.scenario_seed, args.scenarios, args.peak_density):
        built = build(spec, out / "scenarios" / spec.name)
        print(f"{built.name}: {built.signals} signals, {built.vehicles} vehicles, "
              f"{built.lane_km:.1f} lane-km, {built.area_km2:.1f} km² -> {built.cfg}")
        scenarios.append(built)
    if args.build_only:
        return 0

    code = None if args.live else out / "code"
    if code is not None:
        print(f"runs import a snapshot of the sources: {code} ({snapshot(code)})")
    jobs = [(b, c, s) for b in scenarios for s in args.seeds for c in args.controllers]
    results: list[Result] = []
    with tqdm(total=len(jobs), unit="run") as bar:
        for res in run_all(jobs, out, args.jobs, code):
            bar.set_description(f"{res.scenario} seed {res.seed} {res.controller}")
            if res.error:
                tqdm.write(f"{res.scenario} seed {res.seed} {res.controller}: {res.error}")
            results.append(res)
            bar.update()

    text = section(command, info, results, scenarios, args.controllers, args.seeds,
                   args.scenario_seed)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({
        "command": command, "machine": info, "scenario_seed": args.scenario_seed,
        "scenarios": [{**asdict(b), "cfg": str(b.cfg)} for b in scenarios],
        "verdicts": verdicts(results, scenarios, args.controllers, args.seeds),
        "runs": [asdict(r) for r in results],
    }, indent=2) + "\n")
    if args.write:
        charts(results, scenarios, args.controllers, ROOT / "bench" / "charts")
        write_section(args.write, BEGIN, END, text)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
