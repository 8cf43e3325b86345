"""Row <-> domain: the one place where table rows become domain values and back.

One generic mapping (``RowMap``) per table model, derived from the domain dataclass's fields
and their types: a field that is a column of the table is copied by name; an enum is stored
as its value, a tuple of strings as a JSON array; columns the domain does not have are
derived (``plate_key``) or given by the caller (a read's payload); a column under another
name is renamed (a debt's ``cents`` is the session's ``fee_cents``). Every adapter reads
and writes the rows of ``citybrain.parking.tables`` through these maps only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import types
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import Any, Generic, NamedTuple, TypeVar, Union, get_args, get_origin, get_type_hints

from sqlalchemy import Table

from citybrain.parking.book import PendingExit
from citybrain.parking.matching import Session, SessionStatus
from citybrain.parking.passages import Passage, Read, passage_of
from citybrain.parking.payments import Instruction
from citybrain.parking.plates import lookalike_key
from citybrain.parking.readcontract import Rejection
from citybrain.parking.receipts import breakdown_json
from citybrain.parking.reports import (
    AdjustmentRecord,
    ChargeReport,
    DeadLetterReport,
    DebtReport,
    DisputeRecord,
    PaymentResultRecord,
    ResolutionRecord,
    SessionReport,
)
from citybrain.parking.settlement import Settlement
from citybrain.parking.tables import (
    Adjustment,
    Binding,
    Charge,
    DeadLetter,
    Dispute,
    LedgerModel,
    PassageRow,
    PaymentOutbox,
    PaymentResult,
    PendingExitRow,
    ReadRow,
    ResolutionRow,
    SessionRow,
)

D = TypeVar("D")

# Plates repeat (a car enters, leaves, comes back): their look-alike key is cached.
key_of = lru_cache(maxsize=1 << 16)(lookalike_key)


def _optional(decode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else decode(v)


def _codecs(hint: Any) -> tuple[Callable[[Any], Any] | None, Callable[[Any], Any] | None]:
    """(decode, encode) of a field of type ``hint``; None: the value as is."""
    args = get_args(hint)
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if isinstance(hint, type) and issubclass(hint, Enum):
        # Dict lookups (C calls): a batch converts thousands of these.
        members = _Members(hint)
        values: dict[Any, Any] = {m: m.value for m in hint}
        if optional:
            members[None] = None
            values[None] = None
        return members.__getitem__, values.__getitem__
    if get_origin(hint) is tuple:
        decode = lambda v: tuple(json.loads(v))  # noqa: E731
        encode = lambda v: json.dumps(list(v), ensure_ascii=False)  # noqa: E731
        if optional:
            return _optional(decode), _optional(encode)
        return decode, encode
    return None, None


class _Members(dict[Any, Any]):
    """An enum's members by value; a value that names none raises as ``enum(value)``."""

    def __init__(self, enum: type[Enum]) -> None:
        super().__init__((m.value, m) for m in enum)
        self.enum = enum

    def __missing__(self, value: Any) -> Any:
        return self.enum(value)


def _required(f: dataclasses.Field[Any]) -> bool:
    missing = dataclasses.MISSING
    return f.default is missing and f.default_factory is missing


class RowMap(Generic[D]):
    """A table model's rows <-> a domain dataclass, field by field (see the module doc).

    ``derived``: columns computed from the domain value; ``renamed``: domain field ->
    column; ``generated``: columns the database fills (never written); ``empty``: domain
    fields the table does not keep, given ``()`` (a passage's reads). Other fields are read
    by name: columns of the table, or of a join (a charge's lot and plate)."""

    def __init__(
        self,
        model: type[LedgerModel],
        domain: type[D],
        *,
        derived: Mapping[str, Callable[[D], Any]] | None = None,
        renamed: Mapping[str, str] | None = None,
        generated: Iterable[str] = ("id",),
        empty: Iterable[str] = (),
    ) -> None:
        table = model.__table__  # type: ignore[attr-defined]
        assert isinstance(table, Table)
        self.table = table
        self.domain = domain
        names = dict(renamed or {})
        columns = set(table.c.keys())
        skip = set(generated)
        empty = set(empty)
        hints = get_type_hints(domain)
        decoded: list[tuple[str, str, Callable[[Any], Any] | None]] = []
        encoded: list[tuple[str, str, Callable[[Any], Any] | None]] = []
        self._absent: dict[str, Any] = {}
        for f in dataclasses.fields(domain):  # type: ignore[arg-type]
            column = names.get(f.name, f.name)
            decode, encode = _codecs(hints[f.name])
            if f.name in empty:
                self._absent[f.name] = ()
            elif f.init and (column in columns or _required(f)):
                # read by name: a column of the table, or of a join (else: the default)
                decoded.append((f.name, column, decode))
            if column in columns and column not in skip:
                encoded.append((f.name, column, encode))
        self._derived = dict(derived or {})
        # Built for speed (a batch maps thousands of rows): every attribute fetched by one
        # attrgetter, converters applied only where a type needs one.
        self._fields = tuple(name for name, _, _ in decoded)
        self._read = _getter([column for _, column, _ in decoded])
        self._decoders = tuple((i, f) for i, (_, _, f) in enumerate(decoded) if f is not None)
        self._columns = tuple(column for _, column, _ in encoded)
        self._get = _getter([name for name, _, _ in encoded])
        self._encoders = tuple((i, f) for i, (_, _, f) in enumerate(encoded) if f is not None)

    def of(self, row: Any) -> D:
        """The domain value of ``row`` (any object with the columns as attributes)."""
        values = list(self._read(row))
        for i, decode in self._decoders:
            values[i] = decode(values[i])
        return self.domain(**self._absent, **dict(zip(self._fields, values, strict=True)))

    def values(self, obj: D, **extra: Any) -> dict[str, Any]:
        """The row of ``obj`` (columns by name), with ``extra`` columns."""
        values = list(self._get(obj))
        for i, encode in self._encoders:
            values[i] = encode(values[i])
        out = dict(zip(self._columns, values, strict=True))
        for column, derive in self._derived.items():
            out[column] = derive(obj)
        out.update(extra)
        return out


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The named attributes of an object, as a tuple (however many)."""
    if len(names) == 1:
        (name,) = names
        return lambda obj: (getattr(obj, name),)
    return operator.attrgetter(*names)


def _plate_key(obj: Any) -> str:
    return key_of(obj.plate)


SESSIONS = RowMap(SessionRow, Session, derived={"plate_key": _plate_key})
PENDING = RowMap(PendingExitRow, PendingExit, derived={"plate_key": _plate_key})
PASSAGES = RowMap(
    PassageRow,
    Passage,
    derived={"plate_key": _plate_key},
    empty=("read_ids", "raw_plates", "camera_ids"),
)
READS = RowMap(ReadRow, Read)
DEAD_LETTERS = RowMap(DeadLetter, DeadLetterReport)
CHARGES = RowMap(Charge, ChargeReport)
SESSION_REPORTS = RowMap(SessionRow, SessionReport)
DEBTS = RowMap(SessionRow, DebtReport, renamed={"cents": "fee_cents"})
RESOLUTIONS = RowMap(ResolutionRow, ResolutionRecord)
ADJUSTMENTS = RowMap(Adjustment, AdjustmentRecord)
DISPUTES = RowMap(Dispute, DisputeRecord)
PAYMENT_RESULTS = RowMap(PaymentResult, PaymentResultRecord)
OUTBOX = RowMap(PaymentOutbox, Instruction, generated=())


def charge_instruction(charge: ChargeReport) -> Instruction:
    """A charge's payment instruction, due at once."""
    return Instruction(
        charge.key,
        "charge",
        charge.session_id,
        charge.lot_id,
        charge.account,
        charge.cents,
        charge.charged_at,
        charge.charged_at,
    )


def refund_instruction(refund: AdjustmentRecord, lot_id: str) -> Instruction:
    """A refund's payment instruction, due at once."""
    return Instruction(
        refund.key,
        "refund",
        refund.session_id,
        lot_id,
        refund.account,
        refund.cents,
        refund.created_at,
        refund.created_at,
    )


@dataclasses.dataclass(frozen=True)
class BoundPlate:
    """A plate (normalized) bound to the account that pays its stays."""

    plate: str
    account: str
    bound_at: datetime


BINDINGS = RowMap(Binding, BoundPlate)


class StoredSession(NamedTuple):
    """A stored session: the stay as the rules see it, and its money columns."""

    session: Session
    fee_cents: int | None
    account: str | None
    charged: bool
    breakdown: str | None = None  # the tariff's steps (JSON), when the tariff priced it


def stored_session(row: Any) -> StoredSession:
    return StoredSession(SESSIONS.of(row), row.fee_cents, row.account, row.charged, row.breakdown)


def session_values(
    s: Session, money: Settlement | None, stored: StoredSession | None
) -> dict[str, Any]:
    """The ``session`` row of ``s``; without a settlement, the money columns of ``stored``.
    The breakdown is the settlement's when it priced the stay, else the stored one."""
    if s.status is SessionStatus.CLOSED:
        raise ValueError(f"session {s.session_id} must be settled before it is stored")
    kept = None if stored is None else stored.breakdown
    if money is not None:
        priced = kept if money.breakdown is None else breakdown_json(money.breakdown)
        return SESSIONS.values(
            s,
            fee_cents=money.fee_cents,
            account=money.account,
            charged=money.charged,
            breakdown=priced,
        )
    if stored is not None:
        return SESSIONS.values(
            s,
            fee_cents=stored.fee_cents,
            account=stored.account,
            charged=stored.charged,
            breakdown=kept,
        )
    return SESSIONS.values(s, fee_cents=None, account=None, charged=False, breakdown=None)


def read_values(read: Read, received_at: datetime, payload: bytes) -> dict[str, Any]:
    return READS.values(read, received_at=received_at, payload=payload.decode("utf-8"))


def passage_with(row: Any, reads: Iterable[Read]) -> Passage:
    """The passage of ``row`` rebuilt from its reads (plate voted, times) when they are all
    there, else the stored summary (the rules never look at a passage's reads, so they are
    not needed: the book only appends a new read to them)."""
    found = list(reads)
    return passage_of(row.passage_id, found) if found else PASSAGES.of(row)


def _digest(topic: str, reason: str, payload: bytes) -> str:
    h = hashlib.sha256()
    for part in (topic.encode("utf-8", "surrogatepass"), reason.encode(), payload):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _text_of(payload: bytes) -> str | None:
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in body else body


def dead_letter_values(
    topic: str, lot: str, payload: bytes, rejection: Rejection, received_at: datetime
) -> dict[str, Any]:
    """The ``dead_letter`` row of a rejected message. The same bad message replayed is kept
    once (UNIQUE ``digest`` of topic, reason and payload)."""
    letter = DeadLetterReport(
        id=0,
        topic=topic,
        lot_id=lot,
        read_id=rejection.read_id,
        reason=rejection.reason,
        detail=rejection.detail,
        payload=payload,
        payload_text=_text_of(payload),
        received_at=received_at,
    )
    digest = _digest(topic, rejection.reason.value, payload)
    return DEAD_LETTERS.values(letter, digest=digest)


__all__ = [
    "ADJUSTMENTS",
    "BINDINGS",
    "CHARGES",
    "DEAD_LETTERS",
    "DEBTS",
    "DISPUTES",
    "OUTBOX",
    "PASSAGES",
    "PAYMENT_RESULTS",
    "PENDING",
    "READS",
    "RESOLUTIONS",
    "SESSIONS",
    "SESSION_REPORTS",
    "BoundPlate",
    "RowMap",
    "StoredSession",
    "charge_instruction",
    "dead_letter_values",
    "key_of",
    "passage_with",
    "read_values",
    "refund_instruction",
    "session_values",
    "stored_session",
]
