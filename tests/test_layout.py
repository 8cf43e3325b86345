"""The package layout: ``control/``, ``sim/``, ``parking/`` and ``configs/`` at the top of the
repository, installed as ``citybrain.control`` etc. by pyproject's ``package-dir`` (no links).

The wheel test builds the wheel from a copy of the sources (no network: ``--no-build-isolation``
with the test venv's setuptools), installs it in a fresh venv that sees this venv's
dependencies but not the sources, and runs the installed ``citybrain`` from another folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
    "tool"
]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUP["package-dir"]
ALEMBIC_SCRIPT = "citybrain.parking.migrations.env"  # run by Alembic; migrates when imported


def source_modules() -> dict[str, Path]:
    """Every module of the sources by the name it is installed under: each ``.py`` under a
    mapped folder (``control/port.py``: ``citybrain.control.port``), listed package or not."""
    modules = {}
    for name, folder in PACKAGE_DIR.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            modules[".".join([name, *parts])] = path
    return modules


def installed_path(source: Path) -> Path:
    """Where a file of the sources lands in the installed package (relative to site-packages)."""
    rel = source.relative_to(ROOT)
    best = max(
        (name for name, folder in PACKAGE_DIR.items() if rel.is_relative_to(folder)),
        key=lambda name: len(Path(PACKAGE_DIR[name]).parts),
    )
    return Path(*best.split("."), rel.relative_to(PACKAGE_DIR[best]))


def loaded_data_files() -> list[Path]:
    """The non-Python files the code loads from the package: every TOML of ``configs/`` (the
    settings, the tariffs, the scenario library) and the migrations' Alembic files."""
    migrations = ROOT / "parking" / "migrations"
    return sorted(
        [*(ROOT / "configs").rglob("*.toml")]
        + [p for p in migrations.iterdir() if p.is_file() and p.suffix != ".py"]
    )


def test_every_package_folder_is_listed_and_mapped() -> None:
    """A folder with Python files under a mapped folder is a listed package (else the wheel would
    lack it), and every top-level package folder is part of ``citybrain``."""
    found = set()
    for name, folder in PACKAGE_DIR.items():
        for dirpath, dirnames, filenames in os.walk(ROOT / folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = Path(dirpath).relative_to(ROOT / folder)
            if any(f.endswith(".py") for f in filenames):
                assert "__init__.py" in filenames, f"{dirpath} has modules but no __init__.py"
                found.add(".".join([name, *rel.parts]))
    assert sorted(found) == sorted(SETUP["packages"])
    top = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert top - {"tests"} == set(PACKAGE_DIR.values())


def test_no_links_in_the_package() -> None:
    for folder in PACKAGE_DIR.values():
        for dirpath, dirnames, filenames in os.walk(ROOT / folder):
            for name in dirnames + filenames:
                assert not (Path(dirpath) / name).is_symlink(), f"{dirpath}/{name} is a link"


def _unseen_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unseen_bench", ROOT / "bench" / "unseen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_a_bench_snapshot_holds_every_subpackage_and_runs_from_itself(tmp_path: Path) -> None:
    unseen = _unseen_bench()
    code = tmp_path / "code"
    assert unseen.snapshot(code) == unseen.code_fingerprint(ROOT)
    for module, source in source_modules().items():
        copy = code / installed_path(source)
        assert copy.read_bytes() == source.read_bytes(), module
    for path in loaded_data_files():
        assert (code / installed_path(path)).is_file(), path

    # as bench runs import it: the snapshot first on the path, working in it
    probe = (
        "import importlib, json, sys\n"
        "names = json.loads(sys.argv[1])\n"
        "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(code)}
    names = sorted(set(source_modules()) - {ALEMBIC_SCRIPT})
    proc = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(names)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for name, file in json.loads(proc.stdout).items():
        assert Path(file).is_relative_to(code), (name, file)


@pytest.mark.wheel
def test_the_wheel_installs_in_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    # build from a copy: no build/ or egg-info in the work tree, nothing stale from it
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in PACKAGE_DIR.values():
        shutil.copytree(
            ROOT / folder,
            src / folder,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist),
        ],
        tmp_path,
    )
    (wheel,) = dist.glob("citybrain-*.whl")

    # a fresh venv; the wheel alone installed in it, this venv's site-packages behind it for the
    # dependencies (a plain path entry: this venv's editable citybrain is not activated there)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        tmp_path,
    )
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).strip()
    )
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "citybrain-test-deps.pth").write_text("".join(f"{p}\n" for p in deps))

    work = tmp_path / "work"  # not the repository: nothing to import from the working folder
    work.mkdir()
    installed = site / "citybrain"
    files = {
        p.relative_to(site)
        for p in installed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {installed_path(p) for p in source_modules().values()} <= files
    assert {installed_path(p) for p in loaded_data_files()} <= files
    assert not {p for p in files if p.suffix == ".py"} - {
        installed_path(p) for p in source_modules().values()
    }

    script = str(venv / "bin" / "citybrain")
    assert "parking" in run([script, "--help"], work)
    probe = (
        "import importlib, json, pkgutil, sys, citybrain\n"
        "names = [m.name for m in pkgutil.walk_packages(citybrain.__path__, 'citybrain.')]\n"
        "files = {n: importlib.import_module(n).__file__ for n in names if n != sys.argv[1]}\n"
        "print(json.dumps({'citybrain': citybrain.__file__, **files}))\n"
    )
    imported = json.loads(run([str(python), "-c", probe, ALEMBIC_SCRIPT], work))
    # every module of every subpackage (Alembic's script is installed, checked above)
    assert sorted(imported) == sorted(set(source_modules()) - {ALEMBIC_SCRIPT})
    for name, file in imported.items():
        assert Path(file).is_relative_to(installed), (name, file)

    # what the installed package loads from itself: a scenario spec, a run, the migrations
    # (and the shipped tariffs) on a new ledger
    run([script, "sim", "scenario", "single", "--out", "single"], work)
    run(
        [
            script,
            "sim",
            "run",
            "single/single.sumocfg",
            "--controller",
            "adaptive",
            "--seed",
            "1",
            "--end",
            "60",
            "--out",
            "run",
        ],
        work,
    )
    assert json.loads((work / "run" / "metrics.json").read_text())["mean_delay_s"] >= 0.0
    db = f"sqlite:///{work / 'ledger.db'}"
    assert json.loads(run([script, "parking", "sessions", "--db", db, "--json"], work)) == []


def run(cmd: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
