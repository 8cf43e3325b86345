"""The sensor model: seeded, and it does what its settings say."""

from __future__ import annotations

import numpy as np
import pytest

from citybrain.control.port import DetectorKind, DetectorSpec, Layout
from citybrain.errors import ConfigError
from citybrain.sim.sensors import LoopFault, SensorModel, SensorSettings

from .test_envelope import crossing


def layout() -> Layout:
    loops = tuple(
        DetectorSpec(
            f"l{i}",
            DetectorKind.STOP_LOOP if i % 2 else DetectorKind.UPSTREAM_LOOP,
            "x",
            f"in{i // 2}",
            1.0,
        )
        for i in range(8)
    )
    cams = tuple(DetectorSpec(f"c{i}", DetectorKind.CAMERA, "x", f"in{i}", 100.0) for i in range(4))
    return Layout((crossing(),), loops, cams)


def test_perfect_sensors_pass_readings_through() -> None:
    model = SensorModel(layout(), SensorSettings())
    count, occ = np.array([1, 0, 2, 0, 0, 0, 0, 1]), np.full(8, 0.5)
    assert model.loops(count, occ)[0] is count
    cams = np.array([5, 3, 0, 9]), np.array([2, 3, 0, 1])
    assert model.cameras(*cams)[0] is cams[0]


def test_camera_misses_and_doubles_have_the_configured_rates() -> None:
    model = SensorModel(
        layout(), SensorSettings(camera_miss_rate=0.1, camera_double_rate=0.05, seed=3)
    )
    true = np.full(4, 50)
    queue = np.full(4, 20)
    seen = np.array([model.cameras(true, queue)[0] for _ in range(2000)])
    # expected count per camera: 50 * 0.9 * 1.05 = 47.25
    assert seen.mean() == pytest.approx(47.25, rel=0.01)
    counts, queues = model.cameras(true, queue)
    assert (queues <= counts).all()


def test_same_seed_same_noise() -> None:
    settings = SensorSettings(camera_miss_rate=0.3, seed=11)
    a, b = SensorModel(layout(), settings), SensorModel(layout(), settings)
    true, queue = np.arange(4) * 10, np.arange(4) * 3
    assert all((a.cameras(true, queue)[0] == b.cameras(true, queue)[0]).all() for _ in range(20))


@pytest.mark.parametrize(("fault", "occupancy"), [(LoopFault.DEAD, 0.0), (LoopFault.STUCK_ON, 1.0)])
def test_failed_loops(fault: LoopFault, occupancy: float) -> None:
    model = SensorModel(layout(), SensorSettings(failed_loops_per_intersection=2, loop_fault=fault))
    assert model.failed.size == 2
    count, occ = model.loops(np.ones(8, dtype=np.int64), np.full(8, 0.5))
    assert (count[model.failed] == 0).all() and (occ[model.failed] == occupancy).all()
    healthy = np.setdiff1d(np.arange(8), model.failed)
    assert (count[healthy] == 1).all() and (occ[healthy] == 0.5).all()


def test_bad_rate_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sensors\.camera_miss_rate"):
        SensorSettings(camera_miss_rate=1.5)
