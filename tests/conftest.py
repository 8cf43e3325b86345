"""Shared fixtures: the RESCO maps and real-city scenarios from ../shared (skipped on a user's
clone, required in CI), and the generated library scenarios."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESCO = ROOT.parent / "shared" / "scenarios" / "resco"
RESCO_MAPS = (
    "cologne1",
    "cologne3",
    "cologne8",
    "ingolstadt1",
    "ingolstadt7",
    "ingolstadt21",
    "grid4x4",
    "arterial4x4",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def resco_config(name: str) -> Path:
    """The .sumocfg of a RESCO map; skips when ../shared is absent, except in CI."""
    path = RESCO / name / f"{name}.sumocfg"
    if not path.is_file():
        if in_ci():
            pytest.fail(f"CI=true but the RESCO map is missing: {path}")
        pytest.skip("../shared/scenarios/resco is not here (a user's clone)")
    return path


REAL = ROOT.parent / "shared" / "scenarios" / "real"


def real_config(folder: str, config: str = "run_simulation.sumocfg") -> Path:
    """A real-city scenario's configuration; skips when ../shared is absent, except in CI."""
    path = REAL / folder / config
    if not path.is_file():
        if in_ci():
            pytest.fail(f"CI=true but the real scenario is missing: {path}")
        pytest.skip("../shared/scenarios/real is not here (a user's clone)")
    return path


@pytest.fixture(scope="session")
def library_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="session")
def single_cfg(library_dir: Path) -> Path:
    from citybrain.sim.library import build_scenario, load_spec

    return build_scenario(load_spec("single"), library_dir / "single", seed=1)


@pytest.fixture(scope="session")
def arterial_cfg(library_dir: Path) -> Path:
    from citybrain.sim.library import build_scenario, load_spec

    return build_scenario(load_spec("arterial"), library_dir / "arterial", seed=1)
