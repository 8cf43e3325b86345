"""Arrival prediction from noisy GPS: projection, filtering, travel time (known answers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from citybrain.control.arrival import RouteTracker, travel_time
from citybrain.control.corridor import Corridor, CorridorSignal, Polyline
from citybrain.control.port import GpsFix

# An L-shaped route: 500 m east, then 400 m north; 13.9 m/s, then 10 m/s after 500 m.
L_ROUTE = Polyline(((0.0, 0.0), (500.0, 0.0), (500.0, 400.0)))


def l_corridor() -> Corridor:
    sig = CorridorSignal("x", 480.0, 500.0, ("in0",), (0,), (0,))
    return Corridor("amb", L_ROUTE, (0.0, 500.0), (13.9, 10.0), (sig,))


def point(s: float) -> tuple[float, float]:
    return L_ROUTE.point_at(s)


def test_projection_gives_distance_along_the_route_and_offset() -> None:
    assert L_ROUTE.length_m == pytest.approx(900.0)
    s, off = L_ROUTE.project(250.0, 3.0)
    assert (s, off) == (pytest.approx(250.0), pytest.approx(3.0))
    s, off = L_ROUTE.project(497.0, 300.0)
    assert (s, off) == (pytest.approx(800.0), pytest.approx(3.0))
    # a window keeps the search near the estimate: the corner is the nearest allowed point
    s, _ = L_ROUTE.project(497.0, 300.0, 0.0, 400.0)
    assert s <= 500.0
    assert point(650.0) == pytest.approx((500.0, 150.0))


def test_travel_time_known_answers() -> None:
    c = l_corridor()
    # cruising: 500 m at 13.9 then 100 m at 10
    assert travel_time(c, 0.0, 13.9, 600.0, 2.0) == pytest.approx(500 / 13.9 + 10.0)
    # from standstill, short: still accelerating, d = a t^2 / 2
    assert travel_time(c, 0.0, 0.0, 16.0, 2.0) == pytest.approx(4.0)
    # from standstill, long: cruise time plus the acceleration penalty vc / (2 a)
    assert travel_time(c, 0.0, 0.0, 400.0, 2.0) == pytest.approx(400 / 13.9 + 13.9 / 4.0)
    # a vehicle crawling in a queue is predicted near cruise speed, not at its crawl
    crawl = travel_time(c, 100.0, 1.0, 480.0, 2.0)
    assert crawl < 380 / 13.9 + 4.0 < 380 / 1.0
    assert travel_time(c, 500.0, 5.0, 480.0, 2.0) == 0.0


def track(sigma: float, speed: float, seconds: int, seed: int = 3) -> tuple[RouteTracker, float]:
    rng = np.random.default_rng(seed)
    tracker = RouteTracker(l_corridor())
    s_true = 20.0
    for t in range(seconds):
        x, y = point(s_true)
        nx, ny, nv = rng.normal(size=3)
        tracker.update(GpsFix("amb", float(t), x + sigma * nx, y + sigma * ny, speed + 0.5 * nv))
        s_true += speed
    return tracker, s_true - speed


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_tracker_follows_a_noisy_track_and_predicts_the_arrival(seed: int) -> None:
    # 4 m noise per coordinate, 1 Hz, 12 m/s; after 25 s, around the corner at 500 m too
    tracker, s_true = track(4.0, 12.0, 25, seed)
    assert tracker.s_m == pytest.approx(s_true, abs=4.0)
    assert tracker.v_mps == pytest.approx(12.0, abs=1.0)
    tracker, s_true = track(4.0, 12.0, 50, seed)  # past the corner
    assert s_true > 500
    assert tracker.s_m == pytest.approx(s_true, abs=4.0)


def test_tracker_never_goes_backwards_and_dead_reckons() -> None:
    rng = np.random.default_rng(9)
    tracker = RouteTracker(l_corridor())
    last = -math.inf
    for t in range(40):  # standing at 100 m, 4 m noise: the estimate must not run back
        x, y = point(100.0)
        tracker.update(GpsFix("amb", float(t), x + 4 * rng.normal(), y + 4 * rng.normal(), 0.0))
        assert tracker.s_m >= last
        last = tracker.s_m
    assert tracker.s_m == pytest.approx(100.0, abs=6.0)
    moving, _ = track(0.0, 10.0, 10)
    assert moving.age(12.0) == pytest.approx(3.0)
    assert moving.position(12.0) == pytest.approx(moving.s_m + 3.0 * moving.v_mps)


def test_arrival_prediction_matches_the_truth_with_noise() -> None:
    # constant 12 m/s from 20 m; stop line at 480 m; true arrival at t = 460 / 12 = 38.3 s
    for seed in range(5):
        tracker, _ = track(4.0, 12.0, 15, seed)
        now = 14.0
        predicted = now + travel_time(l_corridor(), tracker.s_m, tracker.v_mps, 480.0, 2.0)
        # predicted at the cruise speed (13.9 > 12): early by at most the speed difference
        assert 460 / 13.9 - 1.5 < predicted < 460 / 12 + 1.5


def test_a_fix_far_off_the_window_is_reacquired_on_the_whole_route() -> None:
    tracker = RouteTracker(l_corridor())
    tracker.update(GpsFix("amb", 0.0, 10.0, 0.0, 10.0))
    tracker.update(GpsFix("amb", 1.0, 500.0, 300.0, 10.0))  # the feed jumped (a long outage)
    assert tracker.raw_s_m == pytest.approx(800.0)
