"""What each part may import: the field service and the settings stay clear of the simulation."""

from __future__ import annotations

import subprocess
import sys


def imported_after(module: str) -> set[str]:
    """The ``citybrain`` modules a fresh interpreter has loaded after importing ``module``."""
    code = (
        f"import sys, {module}; "
        "print('\\n'.join(m for m in sys.modules if m.startswith('citybrain')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def test_the_field_service_imports_nothing_from_the_simulation() -> None:
    loaded = imported_after("citybrain.field.service")
    assert not {m for m in loaded if m.startswith("citybrain.sim")}
    core = imported_after("citybrain.field.core")
    assert not {m for m in core if m.startswith(("citybrain.sim", "citybrain.parking"))}


def test_settings_import_nothing_from_the_simulation() -> None:
    loaded = imported_after("citybrain.settings")
    assert not {m for m in loaded if m.startswith("citybrain.sim")}
    assert "citybrain.netmodel.layout" in loaded  # the [detectors] section's type
