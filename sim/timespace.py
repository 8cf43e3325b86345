"""Time-space diagram of an escorted ambulance, and the raw record beside it.

Distance along the ambulance's route against time: at each signal's stop line a bar in the
colour its lamp showed the ambulance's movement (green, yellow, red), below it the queue the
detectors estimated on the ambulance's approach (at jam spacing), and the ambulance's
trajectory: true (from the simulation, for the record only), its GPS fixes, and the escort's
filtered estimate. A green wave shows as green bars that open one after the other ahead of
the trajectory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from citybrain.control.escort import EscortController, EscortTrace
from citybrain.sim.gps import EmergencyRecord, EmergencyWatch

LAMP_COLOURS = {"G": "#2ca02c", "y": "#f2c100", "r": "#d62728"}
JAM_SPACING_M = 7.5


def write_escort_records(
    watch: EmergencyWatch, escort: EscortController | None, out_dir: Path, title: str
) -> list[Path]:
    """``escort-VEHICLE.json`` and ``timespace-VEHICLE.png`` for every emergency vehicle."""
    written = []
    for vid, rec in watch.records.items():
        trace = escort.trace_of(vid) if escort is not None else None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in vid)
        data = record_json(rec, trace)
        path = out_dir / f"escort-{safe}.json"
        path.write_text(json.dumps(data) + "\n")
        written.append(path)
        if rec.time_s:
            written.append(timespace(rec, trace, out_dir / f"timespace-{safe}.png", title))
    return written


def record_json(rec: EmergencyRecord, trace: EscortTrace | None) -> dict[str, Any]:
    def clean(values: list[float]) -> list[float | None]:
        return [None if math.isnan(v) else round(v, 2) for v in values]

    data: dict[str, Any] = {
        "vehicle": rec.vehicle,
        "depart_s": rec.depart_s,
        "arrive_s": rec.arrive_s,
        "signals": [
            {"id": s.intersection, "stop_m": round(s.stop_m, 1), "phases": list(s.phases)}
            for s in rec.corridor.signals
        ],
        "time_s": rec.time_s,
        "true_s": clean(rec.true_s),
        "gps_s": clean(rec.gps_s),
        "lamps": rec.lamps,
        "passages": [[p.signal, p.time_s, p.state] for p in rec.passages],
        "ran_red": rec.ran_red,
    }
    if trace is not None:
        data["escort"] = {
            "time_s": trace.time_s,
            "est_s": clean(trace.est_s),
            "queue_veh": [[round(q, 1) for q in row] for row in trace.queue_veh],
            "events": trace.events,
        }
    return data


def timespace(rec: EmergencyRecord, trace: EscortTrace | None, path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(11, 6.5))
    times = rec.time_s
    t0, t1 = times[0], times[-1] + 1.0
    signals = rec.corridor.signals
    bar = max(rec.corridor.length_m / 120.0, 4.0)
    for k, sig in enumerate(signals):
        runs: dict[str, list[tuple[float, float]]] = {}
        start, lamp = times[0], rec.lamps[0][k] if rec.lamps else "r"
        for t, row in zip(times[1 : len(rec.lamps)], rec.lamps[1:], strict=False):
            if row[k] != lamp:
                runs.setdefault(lamp, []).append((start, t - start))
                start, lamp = t, row[k]
        runs.setdefault(lamp, []).append((start, t1 - start))
        for lamp_char, spans in runs.items():
            ax.broken_barh(
                spans, (sig.stop_m - bar / 2, bar), color=LAMP_COLOURS.get(lamp_char, "#888888")
            )
        ax.text(t1 + 1, sig.stop_m, sig.intersection, va="center", fontsize=8)
        if trace is not None and trace.queue_veh:
            q = [row[k] * JAM_SPACING_M for row in trace.queue_veh]
            ax.fill_between(
                trace.time_s,
                [sig.stop_m - bar / 2 - d for d in q],
                sig.stop_m - bar / 2,
                step="post",
                color="#7f7f7f",
                alpha=0.35,
                linewidth=0,
                label="queue estimate (jam spacing)" if k == 0 else None,
            )
    ax.plot(times, rec.true_s, color="black", linewidth=1.6, label="ambulance (true)")
    ax.plot(times, rec.gps_s, ".", color="#1f77b4", markersize=3, label="GPS fixes (projected)")
    if trace is not None:
        ax.plot(
            trace.time_s,
            trace.est_s,
            "--",
            color="#9467bd",
            linewidth=1.0,
            label="escort estimate",
        )
        starts = [(t, x) for t, x, what in trace.events if what == "preemption starts"]
        stops = {s.intersection: s.stop_m for s in signals}
        if starts:
            ax.plot(
                [t for t, _ in starts],
                [stops.get(x, math.nan) for _, x in starts],
                "v",
                color="#2ca02c",
                markeredgecolor="black",
                label="preemption asked",
            )
    for p in rec.passages:
        if p.state in "rRsS":
            ax.plot([p.time_s], [stops_of(rec, p.signal)], "x", color="red", markersize=10)
    ax.set_xlim(t0, t1 + 12)
    ax.set_ylim(-20, rec.corridor.length_m + 20)
    ax.set_xlabel("simulation time (s)")
    ax.set_ylabel("distance along the ambulance's route (m)")
    ax.set_title(
        f"{title}: {rec.vehicle}, lamps of its movement (green / yellow / red) at each stop line",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stops_of(rec: EmergencyRecord, signal: str) -> float:
    for s in rec.corridor.signals:
        if s.intersection == signal:
            return s.stop_m
    return math.nan
