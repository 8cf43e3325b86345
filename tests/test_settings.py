"""Settings: embedded defaults, the shipped example file, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from citybrain.errors import ConfigError
from citybrain.settings import Settings, load_settings
from citybrain.sim.sensors import LoopFault

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_file_equals_the_embedded_defaults() -> None:
    assert load_settings(ROOT / "configs" / "citybrain.toml") == Settings()


def test_values_are_typed(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(
        '[sensors]\ncamera_miss_rate = 0.1\nloop_fault = "stuck_on"\n[actuated]\nmax_green_s = 60\n'
    )
    s = load_settings(f)
    assert s.sensors.loop_fault is LoopFault.STUCK_ON
    assert s.actuated.max_green_s == 60.0 and isinstance(s.actuated.max_green_s, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sensors]\ncamera_miss_rat = 0.1\n", "unknown key sensors.camera_miss_rat"),
        ("[sensors]\ncamera_miss_rate = 2.0\n", "sensors.camera_miss_rate must be between 0 and 1"),
        ('[sensors]\nloop_fault = "melted"\n', "sensors.loop_fault must be one of stuck_on, dead"),
        ("[envelope]\nmin_green_s = true\n", "envelope.min_green_s must be a number"),
        (
            "[sensors]\nfailed_loops_per_intersection = 1.5\n",
            "failed_loops_per_intersection must be a whole number",
        ),
        ("sensors = 3\n", "sensors must be a table"),
        ("[oops\n", "not valid TOML"),
    ],
)
def test_bad_files_fail_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(f)
    assert str(f) in str(info.value)
