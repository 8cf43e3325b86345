"""The parking back office's settings: typed, frozen, loaded once from TOML.

``load_parking_settings(path)`` reads a file shaped like ``configs/parking.toml`` (the
shipped one when ``path`` is None). Every section and key is optional except a lot's
``capacity``; an unknown key, or a value of the wrong type or range, is a ``ConfigError``
naming the file and the key (``configs/parking.toml: review.grace_minutes must not be
negative``)::

    [review]
    grace_minutes = 10      # an exit with no entry waits this long before it needs a person
    max_stay_hours = 72     # an open stay older than this is listed for review

    [payments]
    resend_after_s = 30     # an unanswered payment instruction is sent again (doubling)
    currency = "CNY"

    [lots.L01]
    capacity = 400          # spaces: occupancy is counted against it
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path

from citybrain.errors import ConfigError
from citybrain.tomlfile import from_mapping, parse_toml

SHIPPED = "configs/parking.toml"


def _check_number(key: str, value: float, *, minimum: float, strict: bool = False) -> None:
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise ConfigError(f"{key} must be {bound} {minimum:g}, not {value!r}")


@dataclass(frozen=True)
class ReviewSettings:
    """When something needs a person."""

    grace_minutes: float = 10.0  # a pending exit (no entry, or ambiguous) waits this long
    max_stay_hours: float = 72.0  # an open stay older than this is listed for review

    def __post_init__(self) -> None:
        _check_number("review.grace_minutes", self.grace_minutes, minimum=0)
        _check_number("review.max_stay_hours", self.max_stay_hours, minimum=0, strict=True)

    @property
    def grace(self) -> timedelta:
        return timedelta(minutes=self.grace_minutes)

    @property
    def max_stay(self) -> timedelta:
        return timedelta(hours=self.max_stay_hours)


@dataclass(frozen=True)
class PaymentSettings:
    """The payment outbox (``citybrain.parking.payments``)."""

    enabled: bool = True  # parking serve sends instructions and records answers
    resend_after_s: float = 30.0  # an unanswered instruction is sent again (doubling)
    batch: int = 200  # instructions claimed, or answers recorded, per transaction
    currency: str = "CNY"  # ISO 4217, in every instruction

    def __post_init__(self) -> None:
        _check_number("payments.resend_after_s", self.resend_after_s, minimum=0, strict=True)
        if self.batch < 1:
            raise ConfigError(f"payments.batch must be at least 1, not {self.batch}")
        if len(self.currency) != 3 or not self.currency.isalpha() or not self.currency.isupper():
            raise ConfigError(
                f"payments.currency must be an ISO 4217 code such as CNY, not {self.currency!r}"
            )


@dataclass(frozen=True)
class LotSettings:
    """One lot: how many cars it holds."""

    capacity: int


@dataclass(frozen=True)
class ParkingSettings:
    review: ReviewSettings = field(default_factory=ReviewSettings)
    lots: Mapping[str, LotSettings] = field(default_factory=dict)
    payments: PaymentSettings = field(default_factory=PaymentSettings)

    def __post_init__(self) -> None:
        for lot, settings in self.lots.items():
            if settings.capacity < 1:
                raise ConfigError(
                    f"lots.{lot}.capacity must be at least 1, not {settings.capacity}"
                )

    def capacity(self, lot: str) -> int | None:
        found = self.lots.get(lot)
        return None if found is None else found.capacity


def parse_parking_settings(text: str, source: str) -> ParkingSettings:
    return from_mapping(ParkingSettings, parse_toml(text, source), source, "")


def load_parking_settings(path: Path | None = None) -> ParkingSettings:
    """The settings in ``path``, or the shipped ``configs/parking.toml``."""
    if path is None:
        shipped = resources.files("citybrain.configs").joinpath("parking.toml")
        return parse_parking_settings(shipped.read_text(encoding="utf-8"), SHIPPED)
    if not path.is_file():
        raise ConfigError(f"parking settings file not found: {path}")
    return parse_parking_settings(path.read_text(encoding="utf-8"), str(path))
