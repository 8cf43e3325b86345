"""The parking validation's chart: every stay on a timeline, and fees expected vs charged."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from citybrain.parking.validation import StayCheck, ValidationReport

COLORS = {
    "settled": "#2e7d32",
    "unpaid": "#ef6c00",
    "open": "#9e9e9e",
    "review": "#6a1b9a",
    "-": "#cfd8dc",
}
MISMATCH = "#d50000"


def _color(check: StayCheck) -> str:
    """The colour of the stay's own session (the one with its times), else of its first."""
    s = check.stay
    own = [x for x in check.sessions if x.entry_at == s.entry_at and x.exit_at == s.exit_at]
    chosen = own or list(check.sessions)
    return COLORS.get(chosen[0].status, "#000000") if chosen else COLORS["-"]


def validation_chart(report: ValidationReport, path: Path, start: datetime) -> Path:
    """Left: each stay as a bar from entry to exit (hours since ``start``), one row per
    stay grouped by lot, coloured by the ledger's status, outlined red on a mismatch.
    Right: each settleable stay's charged fee against the tariff's fee."""
    checks = sorted(report.stays, key=lambda c: (c.stay.lot_id, c.stay.entry_at))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(14, max(4.0, 0.12 * len(checks) + 2)), width_ratios=(2.2, 1)
    )
    lots: list[tuple[str, int]] = []
    for row, c in enumerate(checks):
        s = c.stay
        x0 = (s.entry_at - start).total_seconds() / 3600
        width = max((s.exit_at - s.entry_at).total_seconds() / 3600, 0.05)
        left.barh(
            row,
            width,
            left=x0,
            height=0.8,
            color=_color(c),
            edgecolor=MISMATCH if not c.ok else "none",
            linewidth=1.5 if not c.ok else 0,
            hatch="//" if c.coverage != "settleable" else None,
        )
        if not lots or lots[-1][0] != s.lot_id:
            lots.append((s.lot_id, row))
    ends = [row for _, row in lots[1:]] + [len(checks)]
    for _, row in lots[1:]:
        left.axhline(row - 0.5, color="#607d8b", linewidth=0.6)
    left.set_yticks([(row + end - 1) / 2 for (_, row), end in zip(lots, ends, strict=True)])
    left.set_yticklabels([lot for lot, _ in lots], fontweight="bold")
    hours = max((c.stay.exit_at - start).total_seconds() / 3600 for c in checks) if checks else 1
    for day in range(1, int(hours // 24) + 2):
        midnight = 24 * day - start.hour - start.minute / 60
        if 0 < midnight < hours + 1:
            left.axvline(midnight, color="#90a4ae", linestyle=":", linewidth=1)
    left.set_ylim(len(checks) - 0.5, -0.5)
    left.set_xlabel(f"hours since {start.strftime('%a %Y-%m-%d %H:%M %Z')} (dotted: midnight)")
    left.set_title("stays (bar: entry to exit; hatched: a passage no camera read)")
    handles = [Patch(color=v, label=k if k != "-" else "no session") for k, v in COLORS.items()]
    handles.append(Patch(facecolor="white", edgecolor=MISMATCH, label="mismatch"))
    left.legend(handles=handles, loc="lower right", fontsize=8)

    settle = [c for c in report.stays if c.coverage == "settleable"]
    expected = [c.expected_fee_cents / 100 for c in settle]
    charged = [
        sum(x.fee_cents or 0 for x in c.sessions) / 100 if c.sessions else 0.0 for c in settle
    ]
    right.scatter(
        expected,
        charged,
        s=18,
        c=[MISMATCH if not c.ok else _color(c) for c in settle],
    )
    top = max([*expected, *charged, 1.0]) * 1.05
    right.plot([0, top], [0, top], color="#90a4ae", linewidth=1)
    right.set_xlim(0, top)
    right.set_ylim(0, top)
    right.set_xlabel("tariff fee of the true stay (yuan)")
    right.set_ylabel("fee in the ledger (yuan)")
    bad = len(report.mismatches)
    right.set_title(f"fees: {len(settle)} settleable stays, {bad} mismatches")
    fig.suptitle("parking settlement against SUMO's stop output")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
