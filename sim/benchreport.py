"""What the benchmark reports share: the machine they ran on and a bar chart of delays."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def machine(repo: Path) -> dict[str, Any]:
    """Platform, CPU, cores, Python, SUMO, date and the code's git state."""
    from citybrain.sim.runner import sumo_version

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "sumo": sumo_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": git(repo, "rev-parse", "--short", "HEAD")
        + (" + uncommitted changes" if git(repo, "status", "--porcelain") else ""),
    }


def write_section(
    path: Path, begin: str, end: str, block: str, intro: str = "# Benchmarks\n"
) -> None:
    """Put ``block`` (from the ``begin`` marker to the ``end`` marker) into the markdown file
    ``path``: in place of the text between those markers, or appended when they are absent
    (a new file starts with ``intro``). Written atomically."""
    text = path.read_text(encoding="utf-8") if path.exists() else intro
    block = block.rstrip("\n")
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "?"


def delay_chart(
    path: Path, delays: dict[str, Sequence[float]], title: str, highlight: str = "adaptive"
) -> Path:
    """Bars of the mean delay per runner over its seeds, error bars one sample std.

    Baselines that are the plan itself (plain sumo, ``fixed``) are grey, runners whose name
    starts with ``highlight`` red, the others blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, v in delays.items() if v]
    means = [statistics.fmean(delays[n]) for n in names]
    stds = [statistics.stdev(delays[n]) if len(delays[n]) > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4))
    colors = [
        "#7f7f7f"
        if n in ("plain", "fixed")
        else "#d62728"
        if n.startswith(highlight)
        else "#1f77b4"
        for n in names
    ]
    bars = ax.bar(names, means, yerr=stds, capsize=4, color=colors)
    ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], padding=3, fontsize=8)
    ax.set_ylabel("RESCO average delay (s)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    ax.margins(y=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
