"""SUMO's command line for a run: the scenario's own configuration, with the harness's overrides.

Everything the configuration sets is kept, except what the harness must decide itself: the
seed, RESCO's teleport and tripinfo flags, the window, the terminal messages, and where
outputs go. A scenario folder may be read-only (published data), so every output the
scenario names (its log, its ``*-output`` options, and the ``file``/``output``/``dest`` of the
detectors and data collectors in its additional files) is redirected into the run's folder,
under ``scenario-outputs/``, keeping its file name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from citybrain.sim.scenario import Scenario
from citybrain.sim.sumoxml import parse_xml

RESCO_FLAGS = ("--time-to-teleport", "-1", "--tripinfo-output.write-unfinished")
OUTPUTS_DIR = "scenario-outputs"
INPUTS_DIR = "scenario-inputs"

_LOG_OPTIONS = frozenset({"log", "message-log", "error-log", "save-state.files"})
_HARNESS_OUTPUTS = frozenset({"tripinfo-output", "statistic-output"})
_DISCARD = frozenset({"", "NUL", "nul", "/dev/null"})
_OUTPUT_ATTRS = ("file", "output", "dest")
_WAUT_TAGS = frozenset({"WAUT", "wautJunction", "wautSwitch"})
_INPUT_ATTRS = {
    "include": ("href",),
    "rerouter": ("file",),
    "poi": ("imgFile",),
    "poly": ("imgFile",),
}


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
    for key, value in scenario.options.items():
        if key in _HARNESS_OUTPUTS or not is_output_option(key) or value.strip() in _DISCARD:
            continue
        names = [v for v in value.replace(",", " ").split() if v]
        target.mkdir(parents=True, exist_ok=True)
        args += [f"--{key}", ",".join(str(target / Path(n).name) for n in names)]
    if scenario.options.get("output-prefix"):
        args += ["--output-prefix", ""]
    return args


def scenario_additionals(scenario: Scenario, out_dir: Path, drop_wauts: bool) -> list[Path]:
    """The scenario's additional files, each as is or, where it must change, a rewritten copy.

    A copy (under ``out_dir/scenario-inputs``) is made of a file that names outputs (they are
    redirected) and, with ``drop_wauts``, of one that switches programs by WAUT (its WAUTs are
    left out: under a citybrain controller the controller switches the signals).
    """
    result = []
    for k, path in enumerate(scenario.additional_files):
        tree = parse_xml(path)
        if not _rewrite(tree.getroot(), path.parent, out_dir / OUTPUTS_DIR, drop_wauts):
            result.append(path)
            continue
        copy = out_dir / INPUTS_DIR / f"{k}-{path.name.removesuffix('.gz')}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        (out_dir / OUTPUTS_DIR).mkdir(parents=True, exist_ok=True)
        tree.write(copy, encoding="utf-8", xml_declaration=True)
        result.append(copy)
    return result


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


def sumo_args(
    scenario: Scenario,
    seed: int,
    out_dir: Path,
    adds: list[Path],
    end_s: float | None,
) -> list[str]:
    """``sumo -c CONFIG`` with the harness's overrides; ``end_s`` None: the scenario has none.

    ``adds`` replaces the configuration's additional files when given (the scenario's own,
    as ``scenario_additionals`` returns them, and the harness's).
    """
    import sumolib

    args = [
        sumolib.checkBinary("sumo"),
        "-c",
        str(scenario.config),
        "--seed",
        str(seed),
        "--random",
        "false",
        *RESCO_FLAGS,
        "--tripinfo-output",
        str(out_dir / "tripinfo.xml"),
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
