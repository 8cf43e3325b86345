"""Signal programs installed in SUMO itself (for the ``sumo-actuated`` baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from citybrain.control.model import Intersection, is_clearance

PROGRAM_ID = "citybrain-actuated"


@dataclass(frozen=True, slots=True)
class ActuatedProgram:
    """SUMO actuated-logic settings, as SUMO's documentation gives them by default."""

    min_green_s: float = 5.0
    max_green_s: float = 50.0
    max_gap_s: float = 3.0
    detector_gap_s: float = 2.0
    passing_time_s: float = 2.0


def write_actuated_programs(
    intersections: tuple[Intersection, ...], path: Path, program: ActuatedProgram | None = None
) -> Path:
    """An additional file switching every signal to SUMO's actuated logic on its own phases.

    Green steps get min/max durations (a plan green shorter than the minimum keeps its own
    time as the minimum); change intervals keep their fixed durations.
    """
    program = program or ActuatedProgram()
    lines = ["<additional>"]
    for x in intersections:
        lines.append(
            f'    <tlLogic id={quoteattr(x.id)} programID="{PROGRAM_ID}" type="actuated"'
            f' offset="{x.plan_offset_s:g}">'
        )
        for key, value in (
            ("max-gap", program.max_gap_s),
            ("detector-gap", program.detector_gap_s),
            ("passing-time", program.passing_time_s),
            ("show-detectors", "false"),
            ("file", "NUL"),
        ):
            lines.append(f'        <param key="{key}" value="{value}"/>')
        for step in x.plan:
            if is_clearance(step.state) or x.phase_of_state(step.state) is None:
                fixed = f'duration="{step.duration_s:g}" state="{step.state}"'
                lines.append(f"        <phase {fixed}/>")
                continue
            lo = min(program.min_green_s, step.duration_s)
            hi = max(program.max_green_s, step.duration_s)
            lines.append(
                f'        <phase duration="{step.duration_s:g}" state="{step.state}"'
                f' minDur="{lo:g}" maxDur="{hi:g}"/>'
            )
        lines.append("    </tlLogic>")
    lines.append("</additional>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
