"""The read contract: decides, once for every part, whether a message is a camera read.

``check_read(payload, topic_lot)`` turns the bytes of one reads message into the ``Read`` it
carries, or a ``Rejection``: a dead-letter reason and a one-line detail that never quotes
the plate. The gateway checks each feed line with it before queueing it, and the ledger
(the parking service's sink) each message before recording it, so what a gateway forwards
is what the service records. Pure: no MQTT, no SQL, no clock.

The decisions (the README's "Parking: the wire contract" lists them too):

* the message: at most 64 KiB of UTF-8 holding one JSON object. A key twice in one object,
  or a number that is not finite as a double (``NaN``, ``Infinity``, ``1e400``), anywhere
  in it (extra fields included), makes it malformed JSON;
* ``read_id``, ``lot_id``, ``camera_id``: strings of at most 128 characters, not blank
  (nothing but whitespace), without control characters (Unicode Cc) or lone surrogates;
  kept as given;
* ``direction``: ``"in"`` or ``"out"``;
* ``plate``: a string of 1 to 32 characters, without control characters or lone
  surrogates, with at least one plate character (``plates.normalize`` keeps something);
  kept as given (the evidence);
* ``confidence``: a JSON number (not ``true``/``false``) within 0..1;
* ``ts``: an RFC 3339 date-time with an offset (``Z`` or ``+08:00``) that exists in UTC.
  The ``Read`` keeps the sender's offset, or UTC with ``utc=True`` (how the ledger stores
  it);
* any other key is allowed and ignored (the payload is kept verbatim as evidence);
* given the lot of the topic the message came on, ``lot_id`` must be that lot.

A message with several faults gets the first reason of ``missing_field``, ``bad_field``,
``bad_direction``, ``confidence_out_of_range``, ``bad_ts``, ``naive_ts``,
``empty_plate``; its detail lists every fault (``"field: why; field: why"``).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, NamedTuple

from citybrain.parking.passages import Direction, Read
from citybrain.parking.plates import normalize

MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_ID_CHARS: Final = 128
MAX_PLATE_CHARS: Final = 32


class DeadReason(StrEnum):
    """Why a message was rejected into ``dead_letter``. The contract decides all of them
    but the last two, which need the ledger's state."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"  # also: a duplicate key, a non-finite number
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"  # wrong type, empty, blank, too long or control characters
    BAD_DIRECTION = "bad_direction"
    CONFIDENCE_OUT_OF_RANGE = "confidence_out_of_range"
    BAD_TS = "bad_ts"  # not an RFC 3339 date-time (or none that exists in UTC)
    NAIVE_TS = "naive_ts"  # RFC 3339 but without an offset
    EMPTY_PLATE = "empty_plate"  # no plate characters after normalization
    LOT_MISMATCH = "lot_mismatch"  # payload lot_id differs from the topic's lot
    UNKNOWN_LOT = "unknown_lot"  # no tariff for the lot: its sessions could not be settled
    READ_ID_CONFLICT = "read_id_conflict"  # a known read_id with different content


@dataclass(frozen=True)
class Rejection:
    """Why a message is not a read. ``detail`` is one line and never quotes the plate."""

    reason: DeadReason
    detail: str
    read_id: str | None = None  # when the payload had a usable one

    @property
    def text(self) -> str:
        """The rejection in one line, for logs and errors."""
        head = f"read {self.read_id}: " if self.read_id is not None else ""
        return f"{head}{self.reason.value}: {self.detail}"


class PayloadError(ValueError):
    """A message that is not a valid read (or ack). Its text is one line without the plate."""

    def __init__(self, message: str, rejection: Rejection | None = None) -> None:
        super().__init__(message)
        self.rejection = rejection

    @classmethod
    def of(cls, rejection: Rejection) -> PayloadError:
        return cls(rejection.text, rejection)


# ---------------------------------------------------------------------------- JSON


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("a number is out of range for a double")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite
)


def decode(payload: bytes) -> dict[str, Any] | Rejection:
    """The JSON object of a message (size, UTF-8, JSON, object), fields not yet checked."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(
            DeadReason.TOO_LARGE, f"{len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})"
        )
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(DeadReason.NOT_UTF8, f"not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        data = _DECODER.decode(body)
    except (ValueError, RecursionError) as exc:  # ValueError: also a 5,000-digit integer
        return Rejection(DeadReason.MALFORMED_JSON, f"not JSON: {exc}")
    if not isinstance(data, dict):
        return Rejection(
            DeadReason.NOT_AN_OBJECT, f"a JSON object is expected, not {type(data).__name__}"
        )
    return data


# ---------------------------------------------------------------------------- fields

_MISSING: Final = object()
# RFC 3339 date-time: full date, full time, optional fraction; the offset is matched
# apart so that a missing one has a reason of its own.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_DIRECTIONS: Final = {"in": Direction.IN, "out": Direction.OUT}
_RANK: Final = {
    reason: rank
    for rank, reason in enumerate(
        (
            DeadReason.MISSING_FIELD,
            DeadReason.BAD_FIELD,
            DeadReason.BAD_DIRECTION,
            DeadReason.CONFIDENCE_OUT_OF_RANGE,
            DeadReason.BAD_TS,
            DeadReason.NAIVE_TS,
            DeadReason.EMPTY_PLATE,
        )
    )
}


class _Fault(NamedTuple):
    reason: DeadReason
    why: str  # "field: what is wrong"


def _has_control(value: str) -> bool:
    """Whether ``value`` has a control character (Cc) or a lone surrogate (Cs)."""
    if value.isprintable():  # the common case: then it has neither
        return False
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


def text_fault(value: object, max_chars: int = MAX_ID_CHARS) -> str | None:
    """What is wrong with ``value`` as an id (``None``: nothing): a string of at most
    ``max_chars`` characters, not blank, without control characters or lone surrogates."""
    if type(value) is not str:
        return "must be a string"
    if not value or value.isspace():
        return "must not be blank"
    if len(value) > max_chars:
        return f"must be at most {max_chars} characters"
    if _has_control(value):
        return "must not contain control characters or lone surrogates"
    return None


def _id(obj: Mapping[str, Any], name: str, faults: list[_Fault]) -> str:
    """The id field ``name`` of ``obj``, or ``""`` with its fault added to ``faults``."""
    value = obj.get(name, _MISSING)
    if value is _MISSING:
        faults.append(_Fault(DeadReason.MISSING_FIELD, f"{name}: missing"))
    elif (why := text_fault(value)) is not None:
        faults.append(_Fault(DeadReason.BAD_FIELD, f"{name}: {why}"))
    else:
        return str(value)
    return ""


def _plate_fault(value: object) -> _Fault | None:
    if type(value) is not str:
        return _Fault(DeadReason.BAD_FIELD, "plate: must be a string")
    if not value:
        return _Fault(DeadReason.BAD_FIELD, "plate: must not be empty")
    if len(value) > MAX_PLATE_CHARS:
        return _Fault(DeadReason.BAD_FIELD, f"plate: must be at most {MAX_PLATE_CHARS} characters")
    if _has_control(value):
        why = "plate: must not contain control characters or lone surrogates"
        return _Fault(DeadReason.BAD_FIELD, why)
    if not normalize(value):
        return _Fault(DeadReason.EMPTY_PLATE, "plate: has no plate characters")
    return None


def _timestamp(value: object, utc: bool) -> datetime | _Fault:
    """The date-time of ``value``, in UTC or as sent (``utc``), or the fault."""
    if type(value) is not str:
        return _Fault(DeadReason.BAD_TS, "ts: must be an RFC 3339 date-time string")
    match = _RFC3339.fullmatch(value)
    if match is None:
        return _Fault(DeadReason.BAD_TS, "ts: is not an RFC 3339 date-time")
    if match.lastindex is None:  # the offset group did not take part
        why = "ts: has no UTC offset (add Z or +hh:mm, e.g. +08:00)"
        return _Fault(DeadReason.NAIVE_TS, why)
    try:
        sent = datetime.fromisoformat(value.upper())  # "t", "z": ASCII only, by the match
        # Only a date-time of year 1 or 9999 can fall outside the range in UTC.
        in_utc = sent.astimezone(UTC) if utc or sent.year in (1, 9999) else sent
    except ValueError as exc:  # month 13, second 60, offset +25:00
        return _Fault(DeadReason.BAD_TS, f"ts: is not a valid date-time: {exc}")
    except OverflowError:  # 9999-12-31T23:59:59-01:00
        return _Fault(DeadReason.BAD_TS, "ts: is not a date-time in UTC's range")
    return in_utc if utc else sent


def parse_rfc3339(text: str) -> datetime:
    """An aware datetime (the sender's offset) from an RFC 3339 date-time, or
    ``PayloadError``."""
    got = _timestamp(text, False)
    if isinstance(got, _Fault):
        raise PayloadError(f"{got.reason.value}: {got.why}")
    return got


def check_object(
    obj: Mapping[str, Any], topic_lot: str | None = None, *, utc: bool = False
) -> Read | Rejection:
    """The read in a decoded message (see the module docstring), or why it is none."""
    faults: list[_Fault] = []
    read_id = _id(obj, "read_id", faults)
    lot_id = _id(obj, "lot_id", faults)
    camera_id = _id(obj, "camera_id", faults)
    direction = obj.get("direction", _MISSING)
    if direction is _MISSING:
        faults.append(_Fault(DeadReason.MISSING_FIELD, "direction: missing"))
    elif type(direction) is not str or direction not in _DIRECTIONS:
        faults.append(_Fault(DeadReason.BAD_DIRECTION, "direction: must be 'in' or 'out'"))
    plate = obj.get("plate", _MISSING)
    if plate is _MISSING:
        faults.append(_Fault(DeadReason.MISSING_FIELD, "plate: missing"))
    elif (fault := _plate_fault(plate)) is not None:
        faults.append(fault)
    confidence = obj.get("confidence", _MISSING)
    if type(confidence) is float or type(confidence) is int:  # not bool
        if not 0.0 <= confidence <= 1.0:
            why = "confidence: must be within 0..1"
            faults.append(_Fault(DeadReason.CONFIDENCE_OUT_OF_RANGE, why))
    elif confidence is _MISSING:
        faults.append(_Fault(DeadReason.MISSING_FIELD, "confidence: missing"))
    else:
        faults.append(_Fault(DeadReason.BAD_FIELD, "confidence: must be a number"))
    ts = obj.get("ts", _MISSING)
    if ts is _MISSING:
        faults.append(_Fault(DeadReason.MISSING_FIELD, "ts: missing"))
    elif isinstance(ts := _timestamp(ts, utc), _Fault):
        faults.append(ts)
    if faults:
        reason = min((f.reason for f in faults), key=_RANK.__getitem__)
        return Rejection(reason, "; ".join(f.why for f in faults), read_id or None)
    if topic_lot is not None and lot_id != topic_lot:
        why = f"payload lot_id {lot_id!r} differs from the topic's lot {topic_lot!r}"
        return Rejection(DeadReason.LOT_MISMATCH, why, read_id)
    assert isinstance(ts, datetime)
    return Read(
        read_id=read_id,
        lot_id=lot_id,
        camera_id=camera_id,
        direction=_DIRECTIONS[direction],
        raw_plate=plate,
        confidence=float(confidence),
        ts=ts,
    )


# ---------------------------------------------------------------------------- messages


def check_read(
    payload: bytes, topic_lot: str | None = None, *, utc: bool = False
) -> Read | Rejection:
    """The ``Read`` in one reads message, or its ``Rejection``. ``topic_lot``: the lot of
    the topic it came on (its ``lot_id`` must match); ``utc``: the read's ``ts`` in UTC."""
    obj = decode(payload)
    if isinstance(obj, Rejection):
        return obj
    return check_object(obj, topic_lot, utc=utc)


def parse_read(payload: bytes, topic_lot: str | None = None, *, utc: bool = False) -> Read:
    """``check_read``, raising ``PayloadError`` (whose text has no plate) for a rejection."""
    got = check_read(payload, topic_lot, utc=utc)
    if isinstance(got, Rejection):
        raise PayloadError.of(got)
    return got


def read_id_of(payload: bytes) -> str | None:
    """The read id of a message when it has a usable one, even if the rest is invalid
    (so that a dead letter can still be acknowledged to its gateway)."""
    obj = decode(payload)
    if isinstance(obj, Rejection):
        return None
    value = obj.get("read_id")
    return value if text_fault(value) is None else None
