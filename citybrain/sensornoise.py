"""How simulated field equipment errs: camera misses and double counts, failed loops, GPS noise.

These are settings sections (``[sensors]``, ``[gps]``) of ``citybrain.settings``; the
simulation applies them (``sim/sensors.py``, ``sim/gps.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from citybrain.errors import ConfigError


class LoopFault(StrEnum):
    STUCK_ON = "stuck_on"
    """Reports occupied all the time and counts nothing."""
    DEAD = "dead"
    """Reports nothing at all."""


@dataclass(frozen=True, slots=True)
class SensorSettings:
    camera_miss_rate: float = 0.0
    """Chance that a camera does not see a vehicle in a frame."""
    camera_double_rate: float = 0.0
    """Chance that a camera counts a seen vehicle twice."""
    failed_loops_per_intersection: int = 0
    """How many loops of each intersection fail (picked at random, seeded)."""
    loop_fault: LoopFault = LoopFault.DEAD
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("camera_miss_rate", "camera_double_rate"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"sensors.{key} must be between 0 and 1, not {value}")
        if self.failed_loops_per_intersection < 0:
            raise ConfigError("sensors.failed_loops_per_intersection must not be negative")

    @property
    def is_perfect(self) -> bool:
        return (
            self.camera_miss_rate == 0
            and self.camera_double_rate == 0
            and self.failed_loops_per_intersection == 0
        )


@dataclass(frozen=True, slots=True)
class GpsSettings:
    sigma_m: float = 4.0
    """Standard deviation of each coordinate's noise."""
    speed_sigma_mps: float = 0.5
    period_s: float = 1.0
    dropout: float = 0.0
    """Chance that a fix is lost."""
    seed: int = 0
    """Added to the run's seed for the noise."""

    def __post_init__(self) -> None:
        if self.sigma_m < 0 or self.speed_sigma_mps < 0:
            raise ConfigError("gps.sigma_m and gps.speed_sigma_mps must not be negative")
        if self.period_s <= 0:
            raise ConfigError(f"gps.period_s must be positive, not {self.period_s}")
        if not 0 <= self.dropout <= 1:
            raise ConfigError(f"gps.dropout must be from 0 to 1, not {self.dropout}")
