"""mypy, as pyproject's [tool.mypy] sets it, on every module of the ``citybrain`` package: each
file once, under the name it is installed as.

``control/``, ``sim/``, ``parking/`` and ``configs/`` are installed as ``citybrain.control``,
``citybrain.sim``, ``citybrain.parking`` and ``citybrain.configs`` (pyproject's
``[tool.setuptools]`` ``packages`` and ``package-dir``). mypy names a file after its path, so
``mypy control`` would check ``control/port.py`` as ``control.port`` and could not follow
``import citybrain.control.port`` to it. This script hands mypy each file of each listed package
with its installed module name; errors are reported at the file's path in the repository.

    .venv/bin/python .ci/typecheck.py [MYPY OPTIONS]
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from pathlib import Path

from mypy import util
from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent


def package_folder(package: str, package_dir: dict[str, str]) -> Path:
    """Where ``package`` lives in the repository: its nearest mapped ancestor's folder, then the
    rest of its name (``citybrain.parking.migrations`` -> ``parking/migrations``)."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:n]))
        if mapped is not None:
            return Path(mapped, *parts[n:])
    return Path(*parts)


def package_sources(root: Path = ROOT) -> list[BuildSource]:
    """Every ``.py`` of every package pyproject lists (path relative to ``root``), by module."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    setup = pyproject["tool"]["setuptools"]
    sources = []
    for package in setup["packages"]:
        folder = package_folder(package, setup.get("package-dir", {}))
        for path in sorted((root / folder).glob("*.py")):
            module = package if path.stem == "__init__" else f"{package}.{path.stem}"
            sources.append(BuildSource(str(folder / path.name), module))
    return sources


def main(argv: list[str]) -> int:
    os.chdir(ROOT)
    t0 = time.time()
    fscache = FileSystemCache()
    targets, options = process_options(
        ["--config-file", "pyproject.toml", *argv], require_targets=False, fscache=fscache
    )
    if targets:
        print("typecheck.py takes mypy's options, no files: it checks the package", file=sys.stderr)
        return 2
    sources = package_sources()
    _, messages, blockers = run_build(sources, options, fscache, t0, sys.stdout, sys.stderr)
    formatter = util.FancyFormatter(sys.stdout, sys.stderr, options.hide_error_codes)
    n_errors, n_notes, n_files = util.count_stats(messages)
    if messages and n_notes < len(messages):
        print(formatter.format_error(n_errors, n_files, len(sources), blockers=blockers,
                                     use_color=options.color_output))
        return 2 if blockers else 1
    print(formatter.format_success(len(sources), options.color_output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
