"""Charts a person would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from citybrain.sim.compare import METRICS, Comparison


def comparison_chart(comparison: Comparison, path: Path) -> Path:
    """Bars of each metric per controller (mean over seeds, error bars: one std)."""
    shown = [m for m in METRICS if m[0] != "wall_time_s"]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4))
    names = list(comparison.controllers)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes, shown, strict=True):
        stats = [comparison.summary[c][key] for c in names]
        bars = ax.bar(
            names,
            [s.mean for s in stats],
            yerr=[s.std for s in stats],
            capsize=4,
            color=[colors[i % len(colors)] for i in range(len(names))],
        )
        ax.bar_label(bars, labels=[f"{s.mean:.0f}" for s in stats], padding=3, fontsize=8)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=30)
        ax.margins(y=0.15)
    seeds = ", ".join(str(s) for s in comparison.seeds)
    fig.suptitle(f"{comparison.scenario}: mean over seeds {seeds} (bars: ± 1 std)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def phase_timeline(
    timelines: dict[str, dict[str, list[tuple[float, str]]]],
    path: Path,
    window: tuple[float, float],
    title: str = "",
) -> Path:
    """Per-intersection signal timelines, one panel per controller.

    Each row is an intersection; a bar's colour is the green phase shown (by its state), yellow
    for change intervals, dark grey for all-red.
    """
    labels = list(timelines)
    signals = sorted({s for tl in timelines.values() for s in tl})
    fig, axes = plt.subplots(
        len(labels), 1, figsize=(12, 1.2 + (0.8 + 0.45 * len(signals)) * len(labels)), squeeze=False
    )
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22"]
    t0, t1 = window
    greens: dict[str, int] = {}  # the same state has the same colour in every panel
    for ax, label in zip(axes[:, 0], labels, strict=True):
        for row, signal in enumerate(signals):
            changes = timelines[label].get(signal, [])
            for k, (start, state) in enumerate(changes):
                end = changes[k + 1][0] if k + 1 < len(changes) else t1
                if end <= t0 or start >= t1:
                    continue
                if any(c in "yYu" for c in state):
                    color: object = "#f2c100"
                elif "G" in state or "g" in state:
                    color = palette[greens.setdefault(state, len(greens)) % len(palette)]
                else:
                    color = "#444444"
                ax.broken_barh(
                    [(max(start, t0), min(end, t1) - max(start, t0))],
                    (row - 0.4, 0.8),
                    color=color,
                )
        ax.set_yticks(range(len(signals)), signals)
        ax.set_xlim(t0, t1)
        ax.set_title(
            f"{label}: colours are green phases, yellow = change interval, grey = all red",
            fontsize=9,
        )
        ax.set_xlabel("simulation time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
