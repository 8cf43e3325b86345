"""SUMO's command line for a run: the scenario's own configuration, with the harness's overrides.

Everything the configuration sets is kept, except what the harness must decide itself: the
seed, RESCO's teleport and tripinfo flags (every teleport option the configuration sets is
turned off too), the window, the terminal messages, and where outputs go. A scenario folder
may be read-only (published data), so every output the scenario names (its log, its
``*-output`` options, saved states, and the ``file``/``output``/``dest`` of the detectors and
data collectors in its additional files and the files they include) is redirected into the
run's folder, under ``scenario-outputs/``, keeping its file name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path

from citybrain.sim.scenario import Scenario
from citybrain.sim.sumoxml import parse_xml

RESCO_FLAGS = ("--time-to-teleport", "-1", "--tripinfo-output.write-unfinished")
OUTPUTS_DIR = "scenario-outputs"
INPUTS_DIR = "scenario-inputs"

_LOG_OPTIONS = frozenset(
    {"log", "message-log", "error-log", "save-state.files", "save-state.prefix"}
)
_HARNESS_OUTPUTS = frozenset({"tripinfo-output", "statistic-output"})
_TELEPORT_OFF = {
    "time-to-teleport.highways": "0",
    "time-to-teleport.disconnected": "-1",
    "time-to-teleport.remove": "false",
    "time-to-teleport.ride": "-1",
    "time-to-teleport.bidi": "-1",
}
"""Teleport options a configuration may set, and the value that turns each off."""
_DISCARD = frozenset({"", "NUL", "nul", "/dev/null"})
_OUTPUT_ATTRS = ("file", "output", "dest")
_WAUT_TAGS = frozenset({"WAUT", "wautJunction", "wautSwitch"})
_INPUT_ATTRS = {
    "include": ("href",),
    "rerouter": ("file",),
    "variableSpeedSign": ("file",),
    "poi": ("imgFile",),
    "poly": ("imgFile",),
}
"""Attributes that name a file the simulation reads (the others of ``_OUTPUT_ATTRS`` it writes)."""


def is_output_option(key: str) -> bool:
    """True for a SUMO option naming a file the simulation writes."""
    if key in _LOG_OPTIONS:
        return True
    if key.endswith(("-output", "-dump")):
        return True
    return key.startswith("device.") and key.endswith((".output", ".file"))


def output_overrides(scenario: Scenario, out_dir: Path) -> list[str]:
    """Options that send the configuration's own outputs into ``out_dir/scenario-outputs``."""
    args: list[str] = []
    target = out_dir / OUTPUTS_DIR
    options = scenario.options
    for key, value in options.items():
        if key in _HARNESS_OUTPUTS or not is_output_option(key) or value.strip() in _DISCARD:
            continue
        names = [v for v in value.replace(",", " ").split() if v]
        args += [f"--{key}", ",".join(str(target / Path(n).name) for n in names)]
    saves_states = options.get("save-state.times") or options.get("save-state.period")
    if saves_states and not options.get("save-state.files") and "save-state.prefix" not in options:
        args += ["--save-state.prefix", str(target / "state")]  # SUMO's default, redirected
    if options.get("output-prefix"):
        args += ["--output-prefix", ""]
    return args


def additional_closure(files: Iterable[Path]) -> Iterator[Path]:
    """The additional files and, after each, the files it includes (``<include href>``)."""
    seen: set[Path] = set()
    stack = list(reversed(list(files)))
    while stack:
        path = stack.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        yield path
        included = [
            (path.parent / e.get("href", "")).resolve()
            for e in parse_xml(path).getroot().iter("include")
            if e.get("href")
        ]
        stack.extend(reversed(included))


def scenario_additionals(scenario: Scenario, out_dir: Path, drop_wauts: bool) -> list[Path]:
    """The scenario's additional files, each as is or, where it must change, a rewritten copy.

    A copy (under ``out_dir/scenario-inputs``) is made of a file that names outputs (they are
    redirected), that includes a file which must change, or, with ``drop_wauts``, that
    switches programs by WAUT (its WAUTs are left out: under a citybrain controller the
    controller switches the signals).
    """
    copies: dict[Path, Path | None] = {}
    return [
        _rewritten(path, out_dir, drop_wauts, copies, f"{k}-") or path
        for k, path in enumerate(scenario.additional_files)
    ]


def _rewritten(
    path: Path, out_dir: Path, drop_wauts: bool, copies: dict[Path, Path | None], tag: str
) -> Path | None:
    """The rewritten copy of ``path`` (its includes first), or None if it needs none."""
    if path in copies:
        return copies[path]
    copies[path] = None  # an include cycle reads as unchanged
    tree = parse_xml(path)
    root = tree.getroot()
    changed = _rewrite(root, path.parent, out_dir / OUTPUTS_DIR, drop_wauts)
    for k, inc in enumerate(root.iter("include")):
        target = Path(inc.get("href", ""))
        if not target.is_file():
            continue
        copy = _rewritten(target, out_dir, drop_wauts, copies, f"{tag}{k}-")
        if copy is not None:
            inc.set("href", str(copy))
            changed = True
    if not changed:
        return None
    copy = out_dir / INPUTS_DIR / f"{tag}{path.name.removesuffix('.gz')}"
    copy.parent.mkdir(parents=True, exist_ok=True)
    tree.write(copy, encoding="utf-8", xml_declaration=True)
    copies[path] = copy
    return copy


def _rewrite(root: ET.Element, base: Path, outputs: Path, drop_wauts: bool) -> bool:
    """Redirect outputs, make inputs absolute and (optionally) drop WAUTs; True if changed."""
    changed = False
    if drop_wauts:
        for parent in list(root.iter()):
            for child in list(parent):
                if child.tag in _WAUT_TAGS:
                    parent.remove(child)
                    changed = True
    for elem in root.iter():
        inputs = _INPUT_ATTRS.get(elem.tag, ())
        for attr in inputs:
            value = elem.get(attr)
            if value and not Path(value).is_absolute():
                elem.set(attr, str((base / value).resolve()))
        for attr in _OUTPUT_ATTRS:
            value = elem.get(attr)
            if attr in inputs or value is None or value.strip() in _DISCARD:
                continue
            elem.set(attr, str(outputs / Path(value).name))
            changed = True
        if elem.tag == "param" and elem.get("key") == "file":
            value = elem.get("value", "")
            if value.strip() not in _DISCARD:
                elem.set("value", str(outputs / Path(value).name))
                changed = True
    return changed


def make_run_dirs(out_dir: Path) -> None:
    """The run folder and the folder the scenario's own outputs go to."""
    (out_dir / OUTPUTS_DIR).mkdir(parents=True, exist_ok=True)


def sumo_args(
    scenario: Scenario,
    seed: int,
    out_dir: Path,
    adds: list[Path],
    end_s: float | None,
) -> list[str]:
    """``sumo -c CONFIG`` with the harness's overrides; ``end_s`` None: the scenario has none.

    ``adds`` replaces the configuration's additional files when given (the scenario's own,
    as ``scenario_additionals`` returns them, and the harness's). The caller makes the
    folders (``make_run_dirs``).
    """
    import sumolib

    teleports = [
        arg
        for key, off in _TELEPORT_OFF.items()
        if key in scenario.options
        for arg in (f"--{key}", off)
    ]
    args = [
        sumolib.checkBinary("sumo"),
        "-c",
        str(scenario.config),
        "--seed",
        str(seed),
        "--random",
        "false",
        *RESCO_FLAGS,
        *teleports,
        "--tripinfo-output",
        str(out_dir / "tripinfo.xml"),
        "--tripinfo-output.write-undeparted",
        "false",
        "--statistic-output",
        str(out_dir / "statistics.xml"),
        "--begin",
        f"{scenario.begin_s:g}",
        *output_overrides(scenario, out_dir),
        "--verbose",
        "false",
        "--no-step-log",
        "true",
        "--no-warnings",
        "true",
        "--duration-log.statistics",
        "false",
    ]
    if end_s is not None:
        args += ["--end", f"{end_s:g}"]
    if adds:
        args += ["--additional-files", ",".join(str(a) for a in adds)]
    return args
