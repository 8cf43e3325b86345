"""Simulated plate cameras at the lot gates: gate events in, camera reads (wire contract) out.

Every gate (a lot's way in, its way out) has two cameras, ``a`` and ``b``, that see a car
at the same instant: the moment it passes the gate. Camera ``a`` prints plates with the
middle dot (``浙A·3K58Q``), camera ``b`` with a space (``浙A 3K58Q``): the service must
normalize both. For each passage, drawn from one seeded generator:

* ``unread_rate``: no camera reads the passage at all (a covered plate, a tailgating car).
  Such a stay cannot be settled; the validation counts it apart and expects the ledger to
  hold it as ``open``/``review``, never charged.
* ``drop_rate``: one of the two cameras misses it; the other still reads it.
* ``double_rate``, per camera that reads: the camera also sends a repeated frame 1 to 45 s
  later (within the 60 s that makes reads one passage).
* ``ocr_error_rate``, per read: one character that has OCR look-alikes (0/D/Q/O, 1/I, 2/Z,
  5/S, 6/G, 8/B) is printed as another of its class. Only look-alikes: no other error.

The read's ``ts`` is the passage's simulation time mapped to a date (``start`` is the
local time of simulation time 0) and shown in the lot's time zone (RFC 3339 with offset);
a repeated frame carries its own, later time. Each read also keeps its provenance (vehicle,
true plate, misread or not) in ``CameraRead``; only the contract fields go on the wire.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from citybrain.parking.plates import LOOKALIKE_CLASSES
from citybrain.parking.validation import GateRead
from citybrain.sim.parking_gates import Direction, GateEvent

CAMERAS = ("a", "b")
REPEAT_DELAY_S = (1, 45)

_CLASS_OF = {ch: cls for cls in LOOKALIKE_CLASSES for ch in cls}


@dataclass(frozen=True)
class CameraOptions:
    ocr_error_rate: float = 0.0
    double_rate: float = 0.0
    drop_rate: float = 0.0
    unread_rate: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("ocr_error_rate", "double_rate", "drop_rate", "unread_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")


@dataclass(frozen=True)
class CameraRead:
    """One read, with its provenance (``vehicle_id``, ``true_plate``, ``misread``)."""

    read_id: str
    lot_id: str
    camera_id: str
    direction: Direction
    plate: str  # as printed
    confidence: float
    ts: datetime
    vehicle_id: str
    true_plate: str
    misread: bool
    repeat: bool

    def wire(self) -> dict[str, object]:
        """The read as the wire contract has it."""
        return {
            "read_id": self.read_id,
            "lot_id": self.lot_id,
            "camera_id": self.camera_id,
            "direction": self.direction,
            "plate": self.plate,
            "confidence": self.confidence,
            "ts": self.ts.isoformat(),
        }


@dataclass(frozen=True)
class CameraFeed:
    reads: tuple[CameraRead, ...]  # by time
    passages: tuple[GateRead, ...]  # one per gate event, with what was printed
    one_camera: int  # passages only one of the two cameras read

    def by_lot(self) -> dict[str, list[CameraRead]]:
        out: dict[str, list[CameraRead]] = {}
        for r in self.reads:
            out.setdefault(r.lot_id, []).append(r)
        return out

    def stats(self) -> dict[str, int]:
        return {
            "passages": len(self.passages),
            "reads": len(self.reads),
            "misreads": sum(1 for r in self.reads if r.misread),
            "repeated_frames": sum(1 for r in self.reads if r.repeat),
            "one_camera_passages": self.one_camera,
            "unread_passages": sum(1 for p in self.passages if not p.read),
        }


def misread(plate: str, rng: random.Random) -> str:
    """``plate`` with one look-alike character swapped for another of its class.

    The province (the first character) and separators are never touched; a plate without
    any look-alike character comes back unchanged.
    """
    spots = [i for i, ch in enumerate(plate) if i > 0 and ch in _CLASS_OF]
    if not spots:
        return plate
    i = rng.choice(spots)
    options = [ch for ch in _CLASS_OF[plate[i]] if ch != plate[i]]
    return plate[:i] + rng.choice(options) + plate[i + 1 :]


def printed(plate: str, camera: str) -> str:
    """How a camera prints a plate: ``a`` with the middle dot, ``b`` with a space."""
    bare = plate.replace("·", "")
    return f"{bare[:2]}·{bare[2:]}" if camera == "a" else f"{bare[:2]} {bare[2:]}"


def simulate_cameras(
    events: Iterable[GateEvent],
    plates: Mapping[str, str],
    start: datetime,
    zones: Mapping[str, ZoneInfo],
    options: CameraOptions,
) -> CameraFeed:
    """The reads the gate cameras produce for ``events`` (see the module docstring).

    ``plates``: vehicle id -> true plate; ``zones``: lot id -> its time zone.
    """
    rng = random.Random(options.seed)
    seq: dict[str, int] = {}
    reads: list[CameraRead] = []
    passages: list[GateRead] = []
    one_camera = 0
    for ev in sorted(events, key=lambda e: (e.time_s, e.vehicle_id, e.direction)):
        plate = plates[ev.vehicle_id]
        at = (start + timedelta(seconds=ev.time_s)).astimezone(zones[ev.lot_id])
        cams: list[str] = []
        if rng.random() >= options.unread_rate:
            cams = list(CAMERAS)
            if rng.random() < options.drop_rate:
                cams.remove(rng.choice(CAMERAS))
                one_camera += 1
        raw: list[str] = []
        for cam in cams:
            frames = [(at, False)]
            if rng.random() < options.double_rate:
                frames.append((at + timedelta(seconds=rng.randint(*REPEAT_DELAY_S)), True))
            for ts, repeat in frames:
                wrong = rng.random() < options.ocr_error_rate
                text = misread(plate, rng) if wrong else plate
                camera_id = f"{ev.lot_id}-{ev.direction}-{cam}"
                n = seq[camera_id] = seq.get(camera_id, 0) + 1
                confidence = rng.uniform(0.55, 0.9) if wrong else rng.uniform(0.86, 0.995)
                reads.append(
                    CameraRead(
                        read_id=f"{camera_id}-{n:06d}",
                        lot_id=ev.lot_id,
                        camera_id=camera_id,
                        direction=ev.direction,
                        plate=printed(text, cam),
                        confidence=round(confidence, 3),
                        ts=ts,
                        vehicle_id=ev.vehicle_id,
                        true_plate=plate,
                        misread=text != plate,
                        repeat=repeat,
                    )
                )
                raw.append(printed(text, cam))
        passages.append(GateRead(plate, ev.lot_id, ev.direction, at, tuple(raw)))
    reads.sort(key=lambda r: (r.ts, r.read_id))
    return CameraFeed(tuple(reads), tuple(passages), one_camera)


def write_feeds(feed: CameraFeed, folder: Path) -> dict[str, Path]:
    """One JSON-lines feed per lot (``LOT.jsonl``, by time) plus ``cameras.jsonl``: every
    read with its provenance. Returns lot -> feed path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for lot, reads in sorted(feed.by_lot().items()):
        path = folder / f"{lot}.jsonl"
        path.write_text(
            "".join(json.dumps(r.wire(), ensure_ascii=False) + "\n" for r in reads),
            encoding="utf-8",
        )
        paths[lot] = path
    with (folder / "cameras.jsonl").open("w", encoding="utf-8") as f:
        for r in feed.reads:
            row = {
                **r.wire(),
                "vehicle_id": r.vehicle_id,
                "true_plate": r.true_plate,
                "misread": r.misread,
                "repeat": r.repeat,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return paths
