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
