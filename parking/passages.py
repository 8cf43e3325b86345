"""Camera reads and passages: the reads of one vehicle going through one gate.

Several cameras and repeated frames read the same car, and OCR sometimes misreads one of
them (``E88656`` printed ``E886S6``). Reads at the same lot and direction whose plates are
equal up to OCR look-alikes (``plates.lookalike_key``), each within ``window`` (60 s) of
another read of the group, are one ``Passage``; a gap longer than the window starts a new
passage.

* The passage's ``plate`` is its best-supported reading: the normalized plate read most
  often; ties go to the higher summed confidence, then to the reading seen first (time,
  then read id). The sum is exact (``math.fsum``), so the choice does not depend on the
  order in which the reads arrived.
* Its time is ``first_ts``, the earliest read, whichever read arrived first.
* Every read stays attached as evidence (``reads``; ``read_ids``, ``raw_plates`` and
  ``camera_ids`` list them in time order).

Two different cars whose plates are look-alikes of each other (``浙A1234D`` and
``浙A12340``) going through the same gate in the same direction within 60 s cannot be told
apart by their plates: they become ONE passage. This is deliberate: a misread is far more
common than such a pair, and the failure is safe: the second car's exit then finds no
open stay and goes to ``review`` (and the stay's plates include both readings, so the
account lookup sees both and never picks one of two accounts: see ``settlement``).

A passage may also be a summary without its reads (``reads == ()``, as a store that keeps
only plate and times loads it). Its plate then stands as given: a read joining it is
recorded (ids, times) but cannot out-vote reads that are not there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
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
    """One plate read by one camera. ``plate`` and ``plate_key`` derive from ``raw_plate``."""

    read_id: str
    lot_id: str
    camera_id: str
    direction: Direction
    raw_plate: str  # exactly what the camera sent: the evidence
    confidence: float  # the camera's own score, 0..1 (breaks ties between readings)
    ts: datetime  # when the camera saw the car (aware)
    plate: str = field(init=False)
    plate_key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        require_aware("Read.ts", self.ts)
        object.__setattr__(self, "direction", Direction(self.direction))
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"Read.confidence must be within 0..1, not {self.confidence}")
        plate = normalize(self.raw_plate)
        if not plate:
            raise ValueError(f"read {self.read_id}: no plate characters in {self.raw_plate!r}")
        object.__setattr__(self, "plate", plate)
        object.__setattr__(self, "plate_key", lookalike_key(plate))


@dataclass(frozen=True)
class PlateSupport:
    """How strongly a set of reads supports one normalized plate."""

    plate: str
    reads: int  # how many reads printed it
    confidence: float  # their summed confidence (exact sum: order-independent)
    first_ts: datetime  # the earliest of them
    first_read_id: str  # its read id (ties of time)

    def rank(self) -> tuple[int, float, datetime, str, str]:
        """Sort key, best first: most reads, highest confidence, earliest, then ids."""
        return (-self.reads, -self.confidence, self.first_ts, self.first_read_id, self.plate)

    def stronger_than(self, other: PlateSupport) -> bool:
        """Strictly more reads, or as many and a strictly higher summed confidence."""
        return (self.reads, self.confidence) > (other.reads, other.confidence)


def plate_support(reads: Iterable[Read]) -> tuple[PlateSupport, ...]:
    """The support of every plate among ``reads`` (a read id counts once), best first."""
    unique = {r.read_id: r for r in reads}
    by_plate: dict[str, list[Read]] = {}
    for r in unique.values():
        by_plate.setdefault(r.plate, []).append(r)
    out = []
    for plate, group in by_plate.items():
        first = min(group, key=lambda r: (r.ts, r.read_id))
        total = math.fsum(r.confidence for r in group)
        out.append(PlateSupport(plate, len(group), total, first.ts, first.read_id))
    return tuple(sorted(out, key=PlateSupport.rank))


def best_plate(reads: Iterable[Read]) -> str:
    """The best-supported plate among ``reads`` (see the module docstring)."""
    support = plate_support(reads)
    if not support:
        raise ValueError("best_plate needs at least one read")
    return support[0].plate


@dataclass(frozen=True)
class Passage:
    """The reads of one vehicle through one gate in one direction.

    ``passage_id`` is the id of the read that created it (stable when more reads join, so
    a session named after it keeps its name): in ``group_passages`` the earliest read, in a
    ``SessionBook`` the first read to arrive. ``plate`` is the best-supported reading,
    ``first_ts`` (the passage's time) the earliest read. ``reads`` is the evidence; empty
    for a summary loaded without it (see the module docstring).
    """

    passage_id: str
    lot_id: str
    direction: Direction
    plate: str
    first_ts: datetime
    last_ts: datetime
    read_ids: tuple[str, ...]
    raw_plates: tuple[str, ...]  # distinct raw texts, in time order
    camera_ids: tuple[str, ...]  # distinct cameras, in time order
    reads: tuple[Read, ...] = field(default=(), repr=False)  # evidence, by (ts, read id)

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

    @property
    def has_evidence(self) -> bool:
        """Whether every read of the passage is in ``reads`` (not a bare summary)."""
        return bool(self.reads) and len(self.reads) == len(self.read_ids)

    @property
    def plates(self) -> tuple[str, ...]:
        """Every normalized plate read for this passage (its own first), no repeats."""
        return tuple(dict.fromkeys((self.plate, *(r.plate for r in self.reads))))

    @property
    def support(self) -> tuple[PlateSupport, ...]:
        return plate_support(self.reads)


def _order(read: Read) -> tuple[datetime, str]:
    return (read.ts, read.read_id)


def passage_of(passage_id: str, reads: Iterable[Read]) -> Passage:
    """The passage made of ``reads`` (one lot, direction and look-alike key), named
    ``passage_id``. A read id given twice counts once. Order of ``reads`` is irrelevant."""
    ordered: Sequence[Read] = sorted({r.read_id: r for r in reads}.values(), key=_order)
    if not ordered:
        raise ValueError(f"passage {passage_id} needs at least one read")
    first = ordered[0]
    if len(ordered) == 1:  # most passages start so: the same passage, built directly
        return Passage(
            passage_id=passage_id,
            lot_id=first.lot_id,
            direction=first.direction,
            plate=first.plate,
            first_ts=first.ts,
            last_ts=first.ts,
            read_ids=(first.read_id,),
            raw_plates=(first.raw_plate,),
            camera_ids=(first.camera_id,),
            reads=(first,),
        )
    for r in ordered[1:]:
        if (r.lot_id, r.direction, r.plate_key) != (first.lot_id, first.direction, first.plate_key):
            raise ValueError(
                f"read {r.read_id} is not of passage {passage_id} "
                f"({r.lot_id} {r.direction} vs {first.lot_id} {first.direction}, "
                "or a plate that is not a look-alike)"
            )
    return Passage(
        passage_id=passage_id,
        lot_id=first.lot_id,
        direction=first.direction,
        plate=best_plate(ordered),
        first_ts=first.ts,
        last_ts=max(r.ts for r in ordered),
        read_ids=tuple(r.read_id for r in ordered),
        raw_plates=tuple(dict.fromkeys(r.raw_plate for r in ordered)),
        camera_ids=tuple(dict.fromkeys(r.camera_id for r in ordered)),
        reads=tuple(ordered),
    )


def start_passage(read: Read) -> Passage:
    """A passage made of one read."""
    return passage_of(read.read_id, (read,))


def belongs_to(passage: Passage, read: Read, window: timedelta = PASSAGE_WINDOW) -> bool:
    """Whether ``read`` is another read of ``passage``: same lot and direction, a plate
    equal up to look-alikes, and a time at most ``window`` before the first or after the
    last read (reads may arrive out of order)."""
    return (
        read.lot_id == passage.lot_id
        and read.direction == passage.direction
        and read.plate_key == passage.plate_key
        and passage.first_ts - window <= read.ts <= passage.last_ts + window
    )


def extend(passage: Passage, read: Read) -> Passage:
    """``passage`` with ``read`` added (no-op for a read already in it).

    With its evidence, the passage is rebuilt from all its reads (plate re-voted, first
    time recomputed); a bare summary only records the read's id, text, camera and time.
    """
    if read.read_id in passage.read_ids:
        return passage
    if (read.lot_id, read.direction, read.plate_key) != (
        passage.lot_id,
        passage.direction,
        passage.plate_key,
    ):
        raise ValueError(f"read {read.read_id} is not of passage {passage.passage_id}")
    if passage.has_evidence:
        return passage_of(passage.passage_id, (*passage.reads, read))
    return replace(
        passage,
        first_ts=min(passage.first_ts, read.ts),
        last_ts=max(passage.last_ts, read.ts),
        read_ids=(*passage.read_ids, read.read_id),
        raw_plates=_add(passage.raw_plates, read.raw_plate),
        camera_ids=_add(passage.camera_ids, read.camera_id),
    )


def group_passages(reads: Iterable[Read], window: timedelta = PASSAGE_WINDOW) -> list[Passage]:
    """Group a batch of reads into passages, sorted by time (then passage id).

    Reads are taken in time order (then read id); a read joins the latest passage of the
    same lot, direction and look-alike key when it is at most ``window`` after that
    passage's last read. A read id seen twice counts once. The result depends only on the
    set of reads, not on their order; each passage is named after its earliest read.
    """
    ordered = sorted({r.read_id: r for r in reads}.values(), key=_order)
    done: list[list[Read]] = []
    current: dict[tuple[str, Direction, str], list[Read]] = {}
    for read in ordered:
        key = (read.lot_id, read.direction, read.plate_key)
        group = current.get(key)
        if group is not None and read.ts - group[-1].ts <= window:
            group.append(read)
        else:
            if group is not None:
                done.append(group)
            current[key] = [read]
    done.extend(current.values())
    passages = [passage_of(group[0].read_id, group) for group in done]
    return sorted(passages, key=lambda p: (p.first_ts, p.passage_id))


def _add(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return items if item in items else (*items, item)
