"""Camera reads and passages: the reads of one vehicle going through one gate.

Several cameras and repeated frames read the same car; reads of the same normalized plate
at the same lot and direction, each within ``window`` (60 s) of the previous read of the
group, are one ``Passage``. A gap longer than the window starts a new passage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from citybrain.parking.plates import lookalike_key, normalize
from citybrain.parking.times import require_aware

PASSAGE_WINDOW = timedelta(seconds=60)


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


@dataclass(frozen=True)
class Read:
    """One plate read by one camera. ``plate`` is derived from ``raw_plate``."""

    read_id: str
    lot_id: str
    camera_id: str
    direction: Direction
    raw_plate: str  # exactly what the camera sent: the evidence
    confidence: float  # the camera's own score, 0..1 (kept, not used by the rules)
    ts: datetime  # when the camera saw the car (aware)
    plate: str = field(init=False)

    def __post_init__(self) -> None:
        require_aware("Read.ts", self.ts)
        object.__setattr__(self, "direction", Direction(self.direction))
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"Read.confidence must be within 0..1, not {self.confidence}")
        plate = normalize(self.raw_plate)
        if not plate:
            raise ValueError(f"read {self.read_id}: no plate characters in {self.raw_plate!r}")
        object.__setattr__(self, "plate", plate)


@dataclass(frozen=True)
class Passage:
    """The reads of one vehicle through one gate in one direction.

    ``passage_id`` is the id of the read that started it (stable when more reads join).
    The passage's time is ``first_ts``, its earliest read.
    """

    passage_id: str
    lot_id: str
    direction: Direction
    plate: str
    first_ts: datetime
    last_ts: datetime
    read_ids: tuple[str, ...]
    raw_plates: tuple[str, ...]  # distinct raw texts, in the order they arrived
    camera_ids: tuple[str, ...]  # distinct cameras, in the order they arrived

    def __post_init__(self) -> None:
        require_aware("Passage.first_ts", self.first_ts)
        require_aware("Passage.last_ts", self.last_ts)
        if self.last_ts < self.first_ts:
            raise ValueError(f"passage {self.passage_id}: last_ts is before first_ts")

    @property
    def ts(self) -> datetime:
        return self.first_ts

    @property
    def plate_key(self) -> str:
        return lookalike_key(self.plate)


def start_passage(read: Read) -> Passage:
    """A passage made of one read."""
    return Passage(
        passage_id=read.read_id,
        lot_id=read.lot_id,
        direction=read.direction,
        plate=read.plate,
        first_ts=read.ts,
        last_ts=read.ts,
        read_ids=(read.read_id,),
        raw_plates=(read.raw_plate,),
        camera_ids=(read.camera_id,),
    )


def belongs_to(passage: Passage, read: Read, window: timedelta = PASSAGE_WINDOW) -> bool:
    """Whether ``read`` is another read of ``passage`` (same lot, direction, plate, time).

    A read up to ``window`` before the first or after the last read joins (reads may
    arrive out of order).
    """
    return (
        read.lot_id == passage.lot_id
        and read.direction == passage.direction
        and read.plate == passage.plate
        and passage.first_ts - window <= read.ts <= passage.last_ts + window
    )


def extend(passage: Passage, read: Read) -> Passage:
    """``passage`` with ``read`` added (no-op for a read already in it)."""
    if read.read_id in passage.read_ids:
        return passage
    return replace(
        passage,
        first_ts=min(passage.first_ts, read.ts),
        last_ts=max(passage.last_ts, read.ts),
        read_ids=(*passage.read_ids, read.read_id),
        raw_plates=_add(passage.raw_plates, read.raw_plate),
        camera_ids=_add(passage.camera_ids, read.camera_id),
    )


def group_passages(reads: Iterable[Read], window: timedelta = PASSAGE_WINDOW) -> list[Passage]:
    """Group a batch of reads into passages, sorted by time.

    Reads are taken in time order (then read id); a read joins the latest passage of the
    same lot, direction and plate when it is at most ``window`` after that passage's last
    read. A read id seen twice counts once.
    """
    ordered = sorted({r.read_id: r for r in reads}.values(), key=lambda r: (r.ts, r.read_id))
    done: list[Passage] = []
    current: dict[tuple[str, Direction, str], Passage] = {}
    for read in ordered:
        key = (read.lot_id, read.direction, read.plate)
        passage = current.get(key)
        if passage is not None and read.ts - passage.last_ts <= window:
            current[key] = extend(passage, read)
        else:
            if passage is not None:
                done.append(passage)
            current[key] = start_passage(read)
    done.extend(current.values())
    return sorted(done, key=lambda p: (p.first_ts, p.passage_id))


def _add(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return items if item in items else (*items, item)
