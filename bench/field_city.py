"""City scale for the field: one ``citybrain control serve`` driving a generated city of a
thousand signals and more, its cabinets simulated by ``citybrain cabinet run`` processes at
1 Hz, through a private Mosquitto; its CPU per intersection-second, the reading-to-command
latency, how many intersections one core holds, and two services on two shards.

    python bench/field_city.py --write BENCHMARKS.md          # the whole bench, ~15 minutes
    python bench/field_city.py --runs city --window-s 20      # the 1,024-signal city only
    python bench/field_city.py --baseline REV --write ...     # REV's code side by side

The city: ``netgenerate --grid`` of NX x NY junctions 200 m apart, every junction a traffic
light (its default program: two phases and their yellows), a 100 m road attached at the
border (so border junctions are four-way too), written under ``--out`` (never committed).

One run: a private Mosquitto with the shipped broker settings (``configs/mosquitto``:
persistence, up to 20 QoS 1 messages in flight to a client, TCP_NODELAY; anonymous, on
loopback), ``--agents`` cabinet processes (``cabinet run --shard i/K --detectors synthetic``,
every cabinet on one connection per process), then the service(s) (``control serve
--tick-on-readings``; two shards: ``--shard 0/2`` and ``1/2``). The bench follows the
services' retained liveness until every signal is held, lets the loop settle for
``--settle-s``, then measures a window of ``--window-s`` seconds: each process's CPU time
(``/proc/PID/stat``, every thread) and the machine's (``/proc/stat``: what the bench's
processes did not use went to others' jobs on this shared machine; a service's main thread
apart, the rest being paho's network thread), then stops the
services and the agents (SIGTERM) and reads the statistics they write on exit
(``--stats-json``), cut to the window:

- reading-to-command latency (``citybrain/field/cabinet_agent.py``): per command a cabinet
  took, from the moment the agent published that cabinet's readings of the command's second
  to the moment the cabinet took the command (one process's clock); ``coverage`` is such
  commands over intersection-seconds of the window (a command computed from the readings
  of its own second for every signal every second is 100 %);
- the service's ticks (``citybrain/field/service.py`` ``TickRecord``): how long after the
  second's start each ran, how many ran without every awaited reading, readings used late;
- the agents' own seconds: when every cabinet's readings were out, when the second's work
  was done (their cost is the simulation's, not the field's: a real cabinet is a machine of
  its own).

The runs (``--runs``): ``city`` (the main city, one service), ``clock`` (the same, the
service ticking at second boundaries, its default), ``sweep`` (one service over
``--sweep`` cities: the CPU per intersection-second at each size and so how many
intersections one core holds), ``shards`` (``--shards-city``, twice the main city, two
services on two shards). ``--baseline REV``: the ``city`` run again with the code of
commit REV (assembled under ``--out``), before/after in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- field-city-bench:begin -->", "<!-- field-city-bench:end -->"
RUNS = ("city", "clock", "sweep", "shards")
TARGET_P99_MS = 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT_TOPIC = "citybrain"


# --------------------------------------------------------------------------- the city


@dataclass(frozen=True, slots=True)
class Grid:
    nx: int
    ny: int

    @classmethod
    def parse(cls, text: str) -> Grid:
        try:
            nx, ny = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise SystemExit(f"a city is NXxNY (e.g. 32x32), not {text!r}") from None
        if nx < 2 or ny < 2:
            raise SystemExit(f"a city needs at least 2x2 junctions, not {text!r}")
        return cls(nx, ny)

    @property
    def name(self) -> str:
        return f"{self.nx}x{self.ny}"

    @property
    def signals(self) -> int:
        return self.nx * self.ny


def netgenerate_args(grid: Grid) -> list[str]:
    return [
        "--grid",
        "--grid.x-number",
        str(grid.nx),
        "--grid.y-number",
        str(grid.ny),
        "--grid.length",
        "200",
        "--grid.attach-length",
        "100",
        "--default.junctions.type",
        "traffic_light",
        "--no-turnarounds",
        "--seed",
        "1",
    ]


def build_city(grid: Grid, out: Path) -> Path:
    """``out/city-NXxNY.net.xml`` (made once: kept while netgenerate's arguments match)."""
    import sumolib

    out.mkdir(parents=True, exist_ok=True)
    net = out / f"city-{grid.name}.net.xml"
    stamp = net.with_suffix(".args")
    wanted = " ".join(netgenerate_args(grid))
    if net.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return net
    cmd = [sumolib.checkBinary("netgenerate"), *netgenerate_args(grid), "--output-file", str(net)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"netgenerate failed: {proc.stderr.strip()[-500:]}")
    stamp.write_text(wanted)
    return net


# --------------------------------------------------------------------------- the code run


def assemble(rev: str, out: Path) -> Path:
    """The ``citybrain`` package of commit ``rev`` assembled as installed (``control/`` as
    ``citybrain/control``, as pyproject's ``package-dir`` says) under ``out``: a folder for
    ``PYTHONPATH``."""
    src, code = (out / f"src-{rev}").resolve(), (out / f"code-{rev}").resolve()
    for folder in (src, code):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
        capture_output=True,
        check=True,
    ).stdout
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(src, filter="data")
    setup = tomllib.loads((src / "pyproject.toml").read_text(encoding="utf-8"))
    for name, folder in sorted(setup["tool"]["setuptools"]["package-dir"].items()):
        if name == "citybrain" or name.startswith("citybrain."):
            place = name.removeprefix("citybrain").removeprefix(".").replace(".", "/")
            shutil.copytree(src / folder, code / "citybrain" / place, dirs_exist_ok=True)
    return code


# --------------------------------------------------------------------------- processes


def broker_config(port: int, workdir: Path) -> str:
    """The shipped broker's settings (``configs/mosquitto/mosquitto.conf``), anonymous on
    loopback."""
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {workdir}/\n"
        "autosave_interval 30\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 20\n"
        "queue_qos0_messages false\n"
        "set_tcp_nodelay true\n"
    )


def cpu_ticks(pid: int, thread: int | None = None) -> int:
    """User and system CPU of a process, every thread (or of one of its threads), in clock
    ticks."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    text = Path(path).read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass
class Proc:
    role: str
    """``service``, ``agent`` or ``broker``."""
    name: str
    popen: subprocess.Popen[bytes] | None
    pid: int
    log: Path
    stats: Path | None = None


class Liveness:
    """The services' retained liveness messages, as they change."""

    def __init__(self, url: str) -> None:
        from paho.mqtt.client import MQTTMessage

        from citybrain.mqtt.address import BrokerSettings
        from citybrain.mqtt.paho import make_client

        self.lock = threading.Lock()
        self.latest: dict[str, dict[str, Any]] = {}
        settings = BrokerSettings.from_url(url)
        self.client = make_client(settings, f"cb-bench-{uuid.uuid4().hex[:8]}", clean_session=True)

        def on_message(_c: object, _u: object, message: MQTTMessage) -> None:
            if message.payload:
                with self.lock:
                    self.latest[message.topic.rsplit("/", 1)[-1]] = json.loads(message.payload)

        self.client.on_message = on_message
        self.client.on_connect = lambda c, *_: c.subscribe(
            f"{ROOT_TOPIC}/control/services/+", qos=1
        )
        self.client.connect(settings.address.host, settings.address.port)
        self.client.loop_start()

    def held(self) -> int:
        with self.lock:
            return sum(int(s.get("counts", {}).get("held", 0)) for s in self.latest.values() if s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True, slots=True)
class RunSpec:
    name: str
    grid: Grid
    services: int = 1
    agents: int = 2
    tick_on_readings: bool = True
    code: str = "this"
    """``this`` (the working tree) or a commit whose code is assembled (``--baseline``)."""


@dataclass
class RunResult:
    spec: RunSpec
    signals: int
    window_s: float
    held: int
    warmup_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds in the window, by process name."""
    main_cpu_s: dict[str, float] = field(default_factory=dict)
    """Of it, the main thread's, by service (the core: messages, ticks; the rest is paho's
    network thread sending and receiving)."""
    roles: dict[str, str] = field(default_factory=dict)
    machine_busy_cores: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    """Reading-to-command latencies of commands taken in the window."""
    unmatched: int = 0
    ticks: list[list[float]] = field(default_factory=list)
    """The services' TickRecords in the window (t, delay_ms, missing, late, duration_ms)."""
    skipped_s: int = 0
    agent_seconds: list[list[float]] = field(default_factory=list)
    """The agents' seconds in the window (second, readings_ms, done_ms)."""
    agent_skipped_s: int = 0
    cabinets: dict[str, int | float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def cores(self, role: str) -> float:
        return sum(v for k, v in self.cpu_s.items() if self.roles[k] == role) / self.window_s

    def others_cores(self) -> float:
        """The machine's busy cores in the window that none of the run's processes used."""
        return max(0.0, self.machine_busy_cores - sum(self.cpu_s.values()) / self.window_s)

    def service_us(self) -> float:
        """Service CPU per intersection-second, µs (every service of the run together)."""
        return self.cores("service") * 1e6 / self.signals

    def main_us(self) -> float:
        """Of it, the services' main threads' (the rest: paho's network threads)."""
        return sum(self.main_cpu_s.values()) / self.window_s * 1e6 / self.signals

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "spec"}
        out["spec"] = {
            "name": self.spec.name,
            "grid": self.spec.grid.name,
            "services": self.spec.services,
            "agents": self.spec.agents,
            "tick_on_readings": self.spec.tick_on_readings,
            "code": self.spec.code,
        }
        return out


def _python(code: Path | None) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if code is not None:  # absolute: the processes run in their own folder
        code = code.resolve()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "citybrain.cli"], env


def run_city(
    spec: RunSpec,
    net: Path,
    out: Path,
    *,
    controller: str,
    flow_vph: float,
    window_s: float,
    settle_s: float,
    warmup_max_s: float,
    tick_wait_s: float,
    code: Path | None = None,
) -> RunResult:
    """One run (see the module docstring); its files under ``out/spec.name``."""
    from citybrain.mqtt.brokers import MosquittoProcess, free_port

    folder = (out / spec.name).resolve()  # the processes run in it
    net = net.resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    port = free_port()
    base, env = _python(code)
    procs: list[Proc] = []
    result = RunResult(spec, spec.grid.signals, window_s, 0, 0.0)
    with MosquittoProcess(
        folder / "broker", port=port, config=broker_config(port, (folder / "broker").resolve())
    ) as broker:
        assert broker.pid is not None
        procs.append(Proc("broker", "mosquitto", None, broker.pid, broker.log_path))
        url = broker.url
        liveness = Liveness(url)
        try:
            for i in range(spec.agents):
                name = f"agent{i}"
                cmd = [
                    *base,
                    "cabinet",
                    "run",
                    "--broker",
                    url,
                    "--net",
                    str(net),
                    "--shard",
                    f"{i}/{spec.agents}",
                    "--detectors",
                    "synthetic",
                    "--flow-vph",
                    str(flow_vph),
                    "--client-id",
                    f"cb-bench-{name}",
                ]
                procs.append(_start("agent", name, cmd, env, folder))
            for i in range(spec.services):
                name = f"service{i}" if spec.services > 1 else "service"
                cmd = [
                    *base,
                    "control",
                    "serve",
                    "--broker",
                    url,
                    "--net",
                    str(net),
                    "--controller",
                    controller,
                    "--client-id",
                    f"cb-bench-{name}",
                    "--service-id",
                    f"cb-bench-{name}",
                ]
                if spec.services > 1:
                    cmd += ["--shard", f"{i}/{spec.services}"]
                if spec.tick_on_readings:
                    cmd += ["--tick-on-readings", str(tick_wait_s)]
                procs.append(_start("service", name, cmd, env, folder))
            result.roles = {p.name: p.role for p in procs}
            t0 = time.monotonic()
            while liveness.held() < spec.grid.signals:
                dead = [p.name for p in procs if p.popen is not None and p.popen.poll() is not None]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited: see {folder}")
                if time.monotonic() - t0 > warmup_max_s:
                    result.errors.append(
                        f"{liveness.held()} of {spec.grid.signals} signals held after "
                        f"{warmup_max_s:g} s; measured all the same"
                    )
                    break
                time.sleep(0.2)
            result.warmup_s = time.monotonic() - t0
            time.sleep(settle_s)
            result.held = liveness.held()
            services = [p for p in procs if p.role == "service"]
            before = {p.name: cpu_ticks(p.pid) for p in procs}
            main_before = {p.name: cpu_ticks(p.pid, p.pid) for p in services}
            m_before = machine_ticks()
            w0 = time.time()
            time.sleep(window_s)
            w1 = time.time()
            after = {p.name: cpu_ticks(p.pid) for p in procs}
            main_after = {p.name: cpu_ticks(p.pid, p.pid) for p in services}
            m_after = machine_ticks()
            result.window_s = w1 - w0
            result.cpu_s = {k: (after[k] - before[k]) / CLK_TCK for k in before}
            result.main_cpu_s = {k: (main_after[k] - main_before[k]) / CLK_TCK for k in main_before}
            busy, total = (a - b for a, b in zip(m_after, m_before, strict=True))
            result.machine_busy_cores = busy / total * (os.cpu_count() or 1) if total else 0.0
        finally:
            liveness.close()
            _stop([p for p in procs if p.role == "service"])
            _stop([p for p in procs if p.role == "agent"])
    for p in procs:
        if p.popen is not None and p.popen.returncode not in (0, None):
            result.errors.append(f"{p.name} exited with {p.popen.returncode} (see {p.log})")
    if result.cpu_s:
        _collect(result, procs, w0, w1)
    return result


def _start(role: str, name: str, cmd: list[str], env: dict[str, str], folder: Path) -> Proc:
    stats = folder / f"{name}.json"
    log = folder / f"{name}.log"
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            [*cmd, "--stats-json", str(stats)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,  # not the checkout: its citybrain/ would shadow PYTHONPATH's
        )
    return Proc(role, name, popen, popen.pid, log, stats)


def _stop(procs: Sequence[Proc]) -> None:
    for p in procs:
        if p.popen is not None and p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    for p in procs:
        if p.popen is None:
            continue
        try:
            p.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def _collect(result: RunResult, procs: Sequence[Proc], w0: float, w1: float) -> None:
    """The processes' statistics, cut to the window ``[w0, w1]`` (wall clock)."""
    totals: dict[str, int | float] = {}
    for p in procs:
        if p.stats is None or not p.stats.is_file():
            if p.role != "broker":
                result.errors.append(f"{p.name} wrote no statistics (see {p.log})")
            continue
        data = json.loads(p.stats.read_text())
        if p.role == "agent":
            result.latency_ms += [ms for at, ms in data["reading_to_command"] if w0 <= at <= w1]
            result.agent_seconds += [s for s in data["second_ms"] if w0 <= s[0] <= w1]
            result.agent_skipped_s += int(data["skipped_s"])
            result.unmatched += int(data["unmatched"])
            for k, v in data["cabinets"].items():
                totals[k] = (
                    max(totals.get(k, 0), v) if k == "longest_silence_s" else (totals.get(k, 0) + v)
                )
        else:
            result.ticks += [r for r in data["recent"] if w0 <= r[0] <= w1]
            result.skipped_s += int(data["skipped_s"])
    result.cabinets = totals


# --------------------------------------------------------------------------- the report


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def row(r: RunResult) -> str:
    """One table row of a run."""
    n = r.signals
    ticks = r.ticks
    delays = [t[1] for t in ticks]
    durations = [t[4] for t in ticks]
    late = sum(int(t[3]) for t in ticks)
    timed_out = sum(1 for t in ticks if t[2] > 0)
    readings = [s[1] for s in r.agent_seconds]
    coverage = len(r.latency_ms) / (n * r.window_s) if n and r.window_s else 0.0
    latency = (
        f"{_ms(pct(r.latency_ms, 0.5))} / {_ms(pct(r.latency_ms, 0.99))} / "
        f"{_ms(max(r.latency_ms, default=math.nan))}"
        if r.spec.tick_on_readings
        else "(not defined: see text)"
    )
    return (
        f"| {r.spec.name} | {n:,} | {r.spec.services} | {r.spec.agents} | "
        f"{'readings' if r.spec.tick_on_readings else 'second'} | {r.held:,} | "
        f"{r.cores('service'):.2f} | {r.service_us():,.0f} ({r.main_us():,.0f}) | "
        f"{r.cores('agent'):.2f} | {r.cores('broker'):.2f} | {r.machine_busy_cores:.2f} | "
        f"{latency} | {coverage:.1%} | "
        f"{_ms(pct(readings, 0.5))} / {_ms(pct(readings, 0.99))} | "
        f"{_ms(pct(delays, 0.5))} / {_ms(pct(delays, 0.99))} | "
        f"{_ms(pct(durations, 0.5))} / {_ms(pct(durations, 0.99))} | "
        f"{timed_out} | {late:,} | {r.skipped_s} |"
    )


HEADER = (
    "| run | signals | services | agents | tick | held | service cores | service µs per "
    "intersection-s (main thread) | agents cores | broker cores | machine busy cores | "
    "reading-to-command ms p50 / p99 / max | coverage | readings out ms p50 / p99 | "
    "tick at ms p50 / p99 | tick takes ms p50 / p99 | ticks timed out | late readings | "
    "skipped s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def section(
    command: str, info: dict[str, Any], results: Sequence[RunResult], args: argparse.Namespace
) -> str:
    """The BENCHMARKS.md section (between the markers)."""
    lines = [
        BEGIN,
        "## Field service at city scale (issue 15, item 7)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores shared with other jobs, "
        f"{info['platform']}, Python {info['python']}, SUMO {info['sumo']}, {info['mosquitto']}; "
        f"{info['date']}; code {info['code']}.",
        "",
        f"Controller `{args.controller}`, synthetic detectors at {args.flow_vph:g} veh/h per "
        f"lane, every measure over a window of {args.window_s:g} s once every signal was held "
        f"and {args.settle_s:g} s more had passed. `--tick-on-readings {args.tick_wait_s:g}` "
        "unless the tick column says `second`. See `bench/field_city.py` for what each column "
        "measures.",
        "",
        HEADER,
        *(row(r) for r in results),
        "",
    ]
    single = [r for r in results if r.spec.services == 1 and r.spec.tick_on_readings]
    single = [r for r in single if r.spec.code == "this" and r.cores("service") > 0]
    if single:
        lines += [
            "Intersections per core: one service, the CPU it took per intersection-second "
            "at each size, and so how many intersections one core of this machine holds at "
            "that cost (1,000,000 µs / µs per intersection-second); the agents simulating "
            "the cabinets and the broker share the same two cores, so the service could not "
            "be driven to a whole core here.",
            "",
            "| run | signals | service cores | µs per intersection-s | intersections per core "
            "| reading-to-command p99 ms | others' cores |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {r.spec.name} | {r.signals:,} | {r.cores('service'):.2f} | "
                f"{r.service_us():,.0f} | {1e6 / r.service_us():,.0f} | "
                f"{_ms(pct(r.latency_ms, 0.99))} | {r.others_cores():.2f} |"
                for r in sorted(single, key=lambda r: r.signals)
            ),
            "",
        ]
    for r in results:
        if r.spec.services > 1:
            each = [
                f"{k} {v / r.window_s:.2f} cores"
                for k, v in sorted(r.cpu_s.items())
                if r.roles[k] == "service"
            ]
            lines += [
                f"Shards ({r.spec.name}): {r.signals:,} signals, {r.held:,} held by "
                f"{r.spec.services} services ({', '.join(each)}); p99 reading-to-command "
                f"{_ms(pct(r.latency_ms, 0.99))} ms.",
                "",
            ]
        if not r.spec.tick_on_readings:
            share = sum(int(t[3]) for t in r.ticks) / (r.signals * r.window_s)
            lines += [
                f"Ticking at second boundaries ({r.spec.name}): {share:.0%} of the readings "
                "of a second reached the service after the tick of that second and were used "
                "a second late (their reading-to-command latency is then a second more than "
                "the loop's); the latency of commands to readings of their own second is not "
                "defined there.",
                "",
            ]
    errors = [f"- {r.spec.name}: {e}" for r in results for e in r.errors]
    if errors:
        lines += ["Problems:", "", *errors, ""]
    cabinets = [
        f"{r.spec.name}: {r.cabinets.get('commands', 0):,} commands shown, "
        f"{r.cabinets.get('refusals', 0)} refused, {r.cabinets.get('fallbacks', 0)} "
        f"fallbacks, {r.cabinets.get('unsafe', 0)} unsafe, {r.unmatched:,} unmatched"
        for r in results
    ]
    lines += ["Cabinets over each whole run: " + "; ".join(cabinets) + ".", "", END]
    return "\n".join(lines)


def summary(results: Sequence[RunResult]) -> list[str]:
    """Lines for the terminal: the figures the issue asks for."""
    out = []
    for r in results:
        p99 = pct(r.latency_ms, 0.99)
        out.append(
            f"{r.spec.name}: {r.signals} signals, {r.held} held; service {r.cores('service'):.2f} "
            f"cores = {r.service_us():.0f} µs per intersection-s; agents "
            f"{r.cores('agent'):.2f}, broker {r.cores('broker'):.2f}, machine "
            f"{r.machine_busy_cores:.2f} cores; p99 reading-to-command {_ms(p99)} ms"
            + (f" [{'; '.join(r.errors)}]" if r.errors else "")
        )
    return out


# --------------------------------------------------------------------------- main


def specs(args: argparse.Namespace) -> list[RunSpec]:
    city = Grid.parse(args.city)
    out: list[RunSpec] = []
    for name in args.runs:
        if name == "city":
            out.append(RunSpec("city", city, agents=args.agents))
            if args.baseline:
                out.append(RunSpec("baseline", city, agents=args.agents, code=args.baseline))
        elif name == "clock":
            out.append(RunSpec("clock", city, agents=args.agents, tick_on_readings=False))
        elif name == "sweep":
            for text in args.sweep:
                grid = Grid.parse(text)
                if grid == city and "city" in args.runs:
                    continue  # the city run is that point
                agents = max(args.agents, math.ceil(grid.signals / 1024))
                out.append(RunSpec(f"sweep-{grid.name}", grid, agents=agents))
        elif name == "shards":
            grid = Grid.parse(args.shards_city)
            out.append(RunSpec("shards", grid, services=2, agents=2 * args.agents))
    return out


def mosquitto_version() -> str:
    from citybrain.mqtt.brokers import find_mosquitto

    binary = find_mosquitto()
    if binary is None:
        return "no Mosquitto"
    proc = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).splitlines()
    return first[0].strip() if first else "Mosquitto"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=lambda s: s.split(","), default=list(RUNS))
    parser.add_argument("--city", default="32x32", help="the main city, NXxNY junctions")
    parser.add_argument(
        "--sweep",
        type=lambda s: s.split(","),
        default=["4x4", "16x16", "32x32", "45x45", "55x55"],
        help="cities for one service (intersections per core)",
    )
    parser.add_argument("--shards-city", default="64x32", help="the city of the two shards")
    parser.add_argument(
        "--agents",
        type=int,
        default=2,
        help="cabinet processes for the main city (a bigger city: one per 1,024 signals, at least "
        "this many; two shards: twice this many)",
    )
    parser.add_argument("--controller", default="adaptive")
    parser.add_argument("--flow-vph", type=float, default=300.0)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--warmup-max-s", type=float, default=120.0)
    parser.add_argument("--tick-wait-s", type=float, default=0.5)
    parser.add_argument("--baseline", help="also run the main city with this commit's code")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "field_city")
    parser.add_argument("--write", type=Path, help="put the section into this markdown file")
    args = parser.parse_args(argv)
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")

    from citybrain.sim.benchreport import machine, write_section

    info = machine(ROOT)
    info["mosquitto"] = mosquitto_version()
    args.out.mkdir(parents=True, exist_ok=True)
    codes: dict[str, Path] = {}
    if args.baseline:
        codes[args.baseline] = assemble(args.baseline, args.out / "code")
    results = []
    for spec in specs(args):
        net = build_city(spec.grid, args.out / "nets")
        print(f"{spec.name}: {spec.grid.signals} signals ...", flush=True)
        result = run_city(
            spec,
            net,
            args.out / "runs",
            controller=args.controller,
            flow_vph=args.flow_vph,
            window_s=args.window_s,
            settle_s=args.settle_s,
            warmup_max_s=args.warmup_max_s,
            tick_wait_s=args.tick_wait_s,
            code=codes.get(spec.code),
        )
        results.append(result)
        print("  " + summary([result])[0], flush=True)
    (args.out / "results.json").write_text(json.dumps([r.to_json() for r in results], indent=1))
    command = "python bench/field_city.py " + " ".join(
        a if a.startswith("-") else repr(a) if " " in a else a
        for a in (argv if argv is not None else sys.argv[1:])
    )
    text = section(command.strip(), info, results, args)
    print(text)
    if args.write:
        write_section(args.write, BEGIN, END, text)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
