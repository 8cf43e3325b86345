"""Webster's cycle and splits: known answers worked by hand."""

from __future__ import annotations

import pytest

from citybrain.control.webster import WebsterTiming, webster_greens


def test_textbook_case() -> None:
    # y = 0.3 + 0.2 = 0.5, L = 10 s: C = (1.5*10 + 5) / (1 - 0.5) = 40 s; 30 s of green
    # shared 3:2.
    cycle, greens = webster_greens([0.3, 0.2], 10.0, WebsterTiming())
    assert cycle == pytest.approx(40.0)
    assert greens == pytest.approx([18.0, 12.0])


def test_heavier_demand_lengthens_the_cycle() -> None:
    # y = 0.8, L = 12 s: C = 23 / 0.2 = 115 s; 103 s of green shared 5:3.
    cycle, greens = webster_greens([0.5, 0.3], 12.0, WebsterTiming())
    assert cycle == pytest.approx(115.0)
    assert greens == pytest.approx([103 * 5 / 8, 103 * 3 / 8])


def test_oversaturated_uses_the_longest_cycle_and_keeps_minimum_greens() -> None:
    cycle, greens = webster_greens([0.9, 0.01, 0.3], 12.0, WebsterTiming(max_cycle_s=150))
    assert cycle == 150.0
    assert min(greens) == 5.0


def test_short_cycle_is_clamped_and_no_demand_splits_evenly() -> None:
    cycle, greens = webster_greens([0.0, 0.0], 8.0, WebsterTiming(min_cycle_s=40))
    assert cycle == 40.0
    assert greens == [16.0, 16.0]
