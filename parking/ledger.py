"""The parking ledger: camera reads in, sessions, charges and debts out, in a database.

``open_ledger(url)`` opens SQLite (``sqlite:///path.db``: WAL, busy timeout, foreign keys)
or PostgreSQL (``postgresql://user@host/db``, driven by psycopg) and upgrades the schema to
the packaged Alembic head. Then:

* ``record(topic_lot, payload, received_at)`` takes one MQTT message. In one transaction
  it validates the payload against the read contract (``ReadIn``), checks the lot against
  the topic's, stores the read as evidence (``read_id`` UNIQUE: a replay is a
  ``duplicate`` that changes nothing), applies the matching rules of
  ``citybrain.parking.book`` to the persisted state of the lot and look-alike key, and
  settles the sessions that closed (fee by tariff; charged to the bound account, or an
  unpaid debt on the plate). A bad message becomes a ``dead_letter`` row with its reason
  and the bytes verbatim; nothing is ever dropped silently.
* ``expire(now)``: pending exits and stale open sessions past the grace period -> review.
* ``bind(plate, account)``: binds a plate and charges its debts, each exactly once.
* Reports: ``sessions``, ``charges``, ``charge_totals``, ``debts``, ``dead_letters``.

Concurrency: a ``Ledger`` may be shared by threads (each call takes its own connection and
transaction). SQLite transactions start with ``BEGIN IMMEDIATE`` (one writer at a time;
others wait up to the busy timeout). On PostgreSQL a call holds a transaction-scoped
advisory lock on its lot (``record``, ``expire``) and on the plates whose money it decides
(``record``'s settlement, ``bind``), always lot first then plates in sorted order; deadlock
and serialization failures are retried. UNIQUE constraints (``read.read_id``,
``charge.session_id``, ``session.entry_passage_id`` / ``exit_passage_id``) back the
guarantees whatever the code does.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from importlib import resources
from types import TracebackType
from typing import Annotated, Any, Literal, TypeVar

from alembic import command
from alembic.config import Config
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError
from sqlalchemy import Connection, Engine, Table, create_engine, event, func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.sql.dml import Insert
from sqlmodel import Session as DbSession
from sqlmodel import col, select

from citybrain.errors import CitybrainError
from citybrain.parking.book import (
    DEFAULT_GRACE,
    PendingExit,
    ReadAbsorbed,
    SentToReview,
    SessionBook,
)
from citybrain.parking.matching import (
    MatchKind,
    ReviewReason,
    Session,
    SessionStatus,
)
from citybrain.parking.passages import PASSAGE_WINDOW, Direction, Passage, Read
from citybrain.parking.plates import lookalike_key, normalize
from citybrain.parking.settlement import Settlement, collect_debt, settle_closed
from citybrain.parking.tables import (
    Binding,
    Charge,
    DeadLetter,
    DeadReason,
    PassageReadRow,
    PassageRow,
    PendingExitRow,
    ReadRow,
    SessionRow,
    metadata,
)
from citybrain.parking.tariff import Tariff, parse_tariffs
from citybrain.parking.times import require_aware

__all__ = [
    "BindOutcome",
    "ChargeReport",
    "DeadLetterReport",
    "DeadReason",
    "DebtReport",
    "Ledger",
    "LedgerError",
    "OutcomeKind",
    "ReadIn",
    "RecordOutcome",
    "Rejection",
    "SessionReport",
    "make_engine",
    "open_ledger",
    "parse_read",
    "upgrade",
]

MAX_PAYLOAD_BYTES = 64 * 1024
SQLITE_BUSY_MS = 30_000
MIGRATIONS = "citybrain.parking:migrations"  # Alembic script location (package resource)
_RETRIES = 5
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
T = TypeVar("T")


class LedgerError(CitybrainError):
    """A ledger that cannot be opened or used as asked (bad URL, bad plate, ...)."""


# ---- the wire contract ----------------------------------------------------------------------

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def _printable(value: str) -> str:
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise PydanticCustomError(
                "bad_text", "must not contain control characters or lone surrogates"
            )
    return value


def _has_plate(value: str) -> str:
    if not normalize(value):
        raise PydanticCustomError("empty_plate", "has no plate characters")
    return value


_Id = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_printable)]
_Plate = Annotated[
    str, Field(min_length=1, max_length=64), AfterValidator(_printable), AfterValidator(_has_plate)
]


class ReadIn(BaseModel):
    """One camera read as published on ``parking/<lot_id>/reads`` (JSON object).

    Strict: no coercion (``"0.9"`` is not a confidence, ``1`` is not a read id); ``ts`` is an
    RFC 3339 date-time WITH an offset (``Z`` or ``+08:00``), stored in UTC. Unknown keys are
    ignored (the payload is kept verbatim anyway).
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    read_id: _Id
    lot_id: _Id
    camera_id: _Id
    direction: Literal["in", "out"]
    plate: _Plate
    confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    ts: datetime

    @field_validator("ts", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> datetime:
        if not isinstance(value, str):
            raise PydanticCustomError("bad_ts", "must be an RFC 3339 date-time string")
        match = _RFC3339.fullmatch(value)
        if match is None:
            raise PydanticCustomError("bad_ts", "is not an RFC 3339 date-time")
        if match.group("offset") is None:
            raise PydanticCustomError(
                "naive_ts", "has no UTC offset (add Z or +hh:mm, e.g. +08:00)"
            )
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            why = {"why": str(exc)}
            raise PydanticCustomError("bad_ts", "is not a valid date-time: {why}", why) from None
        return parsed.astimezone(UTC)

    def to_read(self) -> Read:
        return Read(
            read_id=self.read_id,
            lot_id=self.lot_id,
            camera_id=self.camera_id,
            direction=Direction(self.direction),
            raw_plate=self.plate,
            confidence=self.confidence,
            ts=self.ts,
        )


@dataclass(frozen=True)
class Rejection:
    """Why a message cannot be recorded as a read."""

    reason: DeadReason
    detail: str
    read_id: str | None = None  # when the payload had a usable one


_REASON_ORDER = (
    DeadReason.MISSING_FIELD,
    DeadReason.BAD_FIELD,
    DeadReason.BAD_DIRECTION,
    DeadReason.CONFIDENCE_OUT_OF_RANGE,
    DeadReason.BAD_TS,
    DeadReason.NAIVE_TS,
    DeadReason.EMPTY_PLATE,
)
_RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal", "finite_number"})


def _reason_of(error: ErrorDetails) -> DeadReason:
    kind = error["type"]
    field = str(error["loc"][0]) if error["loc"] else ""
    if kind == "missing":
        return DeadReason.MISSING_FIELD
    if field == "ts":
        return DeadReason.NAIVE_TS if kind == "naive_ts" else DeadReason.BAD_TS
    if field == "direction":
        return DeadReason.BAD_DIRECTION
    if field == "confidence" and kind in _RANGE_ERRORS:
        return DeadReason.CONFIDENCE_OUT_OF_RANGE
    if kind == "empty_plate":
        return DeadReason.EMPTY_PLATE
    return DeadReason.BAD_FIELD


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_read(payload: bytes) -> ReadIn | Rejection:
    """Validate one message against the read contract (no database involved)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(
            DeadReason.TOO_LARGE, f"{len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})"
        )
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(DeadReason.NOT_UTF8, f"not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        data = json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        return Rejection(DeadReason.MALFORMED_JSON, f"not JSON: {exc}")
    if not isinstance(data, dict):
        return Rejection(
            DeadReason.NOT_AN_OBJECT, f"a JSON object is expected, not {type(data).__name__}"
        )
    rid = data.get("read_id")
    read_id = rid if isinstance(rid, str) and rid and _printable_ok(rid) else None
    try:
        return ReadIn.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        reason = min((_reason_of(e) for e in errors), key=_REASON_ORDER.index)
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return Rejection(reason, detail, read_id)


def _printable_ok(value: str) -> bool:
    return len(value) <= 128 and all(unicodedata.category(ch) not in ("Cc", "Cs") for ch in value)


# ---- outcomes and reports -----------------------------------------------------------------


class OutcomeKind(StrEnum):
    RECORDED = "recorded"  # a new read, applied
    DUPLICATE = "duplicate"  # this read_id with this content is already recorded
    DEAD_LETTER = "dead_letter"  # rejected into dead_letter (see reason)


@dataclass(frozen=True)
class RecordOutcome:
    """What ``record`` did. Every outcome is durable: the message can be acknowledged."""

    kind: OutcomeKind
    read_id: str | None
    reason: DeadReason | None = None
    detail: str = ""
    sessions: tuple[str, ...] = ()  # ids of the sessions this read created or changed


JSONValue = str | int | None


@dataclass(frozen=True)
class SessionReport:
    session_id: str
    lot_id: str
    plate: str  # the entry's plate (the exit's when there is no entry)
    exit_plate: str | None
    entry_at: datetime | None
    exit_at: datetime | None
    fee_cents: int | None
    status: str
    account: str | None
    review_reason: str | None
    related: tuple[str, ...]

    def to_json(self) -> dict[str, JSONValue]:
        """The row of ``citybrain parking sessions --json``."""
        return {
            "lot_id": self.lot_id,
            "plate": self.plate,
            "entry_at": _iso(self.entry_at),
            "exit_at": _iso(self.exit_at),
            "fee_cents": self.fee_cents,
            "status": self.status,
            "account": self.account,
        }


@dataclass(frozen=True)
class ChargeReport:
    session_id: str
    lot_id: str
    plate: str
    account: str
    cents: int
    charged_at: datetime


@dataclass(frozen=True)
class DebtReport:
    session_id: str
    lot_id: str
    plate: str
    entry_at: datetime
    exit_at: datetime
    cents: int


@dataclass(frozen=True)
class DeadLetterReport:
    id: int
    topic: str
    lot_id: str
    read_id: str | None
    reason: DeadReason
    detail: str
    payload: bytes
    payload_text: str | None
    received_at: datetime


@dataclass(frozen=True)
class BindOutcome:
    plate: str  # normalized
    account: str
    previous: str | None  # the account the plate was bound to before, if any
    charges: tuple[ChargeReport, ...]  # debts charged now


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# ---- engine and schema ----------------------------------------------------------------------


def make_engine(url: str) -> Engine:
    """An engine for a SQLite file or a PostgreSQL database, configured for the ledger."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise LedgerError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            raise LedgerError("the ledger needs a SQLite file: sqlite:///path/to/ledger.db")
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000}
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        return create_engine(parsed)
    raise LedgerError(f"unsupported database {backend!r}: use sqlite:///FILE or postgresql://...")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level: the "begin" hook below issues BEGIN IMMEDIATE itself,
    # so a transaction takes the write lock at its start instead of failing on upgrade.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the packaged Alembic migrations up to ``revision`` (idempotent, concurrent-safe)."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            _advisory_lock(connection, ("citybrain.parking:migrate",))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def default_tariffs() -> dict[str, Tariff]:
    """The tariffs shipped in ``configs/tariffs.toml``."""
    source = resources.files("citybrain.configs").joinpath("tariffs.toml")
    return parse_tariffs(tomllib.loads(source.read_text(encoding="utf-8")), "configs/tariffs.toml")


def open_ledger(
    url: str,
    *,
    tariffs: Mapping[str, Tariff] | None = None,
    grace: timedelta = DEFAULT_GRACE,
    window: timedelta = PASSAGE_WINDOW,
) -> Ledger:
    """Open (creating or upgrading the schema) the ledger at ``url``.

    ``tariffs`` default to the shipped ``configs/tariffs.toml`` (``tariff.load_tariffs``
    reads another file). Reads of a lot without a tariff are dead-lettered.
    """
    engine = make_engine(url)
    try:
        for attempt in range(5):
            try:
                upgrade(engine)
                break
            except OperationalError as exc:
                # SQLite: switching a new file to WAL takes a lock that the busy timeout does
                # not wait for, so processes opening one new database at once may collide.
                if "locked" not in str(exc.orig) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except OperationalError as exc:
        engine.dispose()
        shown = engine.url.render_as_string(hide_password=True)
        raise LedgerError(f"cannot open the ledger at {shown}: {exc.orig}") from None
    except BaseException:
        engine.dispose()
        raise
    chosen = default_tariffs() if tariffs is None else dict(tariffs)
    return Ledger(engine, chosen, grace=grace, window=window)


def _advisory_lock(connection: Connection, keys: Iterable[str]) -> None:
    """PostgreSQL transaction-scoped locks, taken in sorted order (no lock cycles)."""
    for key in sorted(set(keys)):
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
        )


def _table(name: str) -> Table:
    return metadata.tables[name]


def _digest(topic: str, reason: DeadReason, payload: bytes) -> str:
    h = hashlib.sha256()
    for part in (topic.encode("utf-8", "surrogatepass"), reason.value.encode(), payload):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _text_of(payload: bytes) -> str | None:
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in body else body


# ---- row <-> domain ------------------------------------------------------------------------


def _session_of(row: SessionRow) -> Session:
    return Session(
        session_id=row.session_id,
        lot_id=row.lot_id,
        plate=row.plate,
        status=SessionStatus(row.status),
        received_at=row.received_at,
        entry_passage_id=row.entry_passage_id,
        entry_at=row.entry_at,
        exit_passage_id=row.exit_passage_id,
        exit_at=row.exit_at,
        exit_plate=row.exit_plate,
        matched_by=None if row.matched_by is None else MatchKind(row.matched_by),
        review_reason=None if row.review_reason is None else ReviewReason(row.review_reason),
        related=tuple(json.loads(row.related)),
    )


def _fill_session(row: SessionRow, s: Session, money: Settlement | None) -> None:
    if s.status is SessionStatus.CLOSED:
        raise ValueError(f"session {s.session_id} must be settled before it is stored")
    row.lot_id = s.lot_id
    row.plate = s.plate
    row.plate_key = s.plate_key
    row.status = s.status.value
    row.received_at = s.received_at
    row.entry_passage_id = s.entry_passage_id
    row.entry_at = s.entry_at
    row.exit_passage_id = s.exit_passage_id
    row.exit_at = s.exit_at
    row.exit_plate = s.exit_plate
    row.matched_by = None if s.matched_by is None else s.matched_by.value
    row.review_reason = None if s.review_reason is None else s.review_reason.value
    row.related = json.dumps(list(s.related), ensure_ascii=False)
    if money is not None:
        row.fee_cents = money.fee_cents
        row.account = money.account
        row.charged = money.charged


def _pending_of(row: PendingExitRow) -> PendingExit:
    return PendingExit(
        passage_id=row.passage_id,
        lot_id=row.lot_id,
        plate=row.plate,
        at=row.at,
        since=row.since,
        reason=ReviewReason(row.reason),
        candidates=tuple(json.loads(row.candidates)),
    )


def _pending_values(p: PendingExit) -> dict[str, Any]:
    return {
        "passage_id": p.passage_id,
        "lot_id": p.lot_id,
        "plate": p.plate,
        "plate_key": lookalike_key(p.plate),
        "at": p.at,
        "since": p.since,
        "reason": p.reason.value,
        "candidates": json.dumps(list(p.candidates), ensure_ascii=False),
    }


def _session_report(row: SessionRow) -> SessionReport:
    return SessionReport(
        session_id=row.session_id,
        lot_id=row.lot_id,
        plate=row.plate,
        exit_plate=row.exit_plate,
        entry_at=row.entry_at,
        exit_at=row.exit_at,
        fee_cents=row.fee_cents,
        status=row.status,
        account=row.account,
        review_reason=row.review_reason,
        related=tuple(json.loads(row.related)),
    )


def _first_time(row: SessionRow) -> datetime:
    first = row.entry_at if row.entry_at is not None else row.exit_at
    assert first is not None
    return first


@dataclass
class _State:
    """The persisted state one decision needs, loaded in the deciding transaction."""

    sessions: dict[str, SessionRow]
    pending: dict[str, PendingExitRow]
    passages: dict[str, PassageRow]

    def book(self, grace: timedelta, window: timedelta) -> SessionBook:
        return SessionBook(
            grace=grace,
            window=window,
            sessions=[_session_of(r) for r in self.sessions.values()],
            pending=[_pending_of(r) for r in self.pending.values()],
            passages=[
                _passage_of(r) for r in sorted(self.passages.values(), key=lambda r: r.id or 0)
            ],
        )


def _passage_of(row: PassageRow) -> Passage:
    """The passage as the rules see it: plate, direction, times (ids keep creation order).

    Its reads are in ``passage_read`` -> ``read``; the rules never look at them, so they are
    not loaded (the book only appends the new read to them).
    """
    return Passage(
        passage_id=row.passage_id,
        lot_id=row.lot_id,
        direction=Direction(row.direction),
        plate=row.plate,
        first_ts=row.first_ts,
        last_ts=row.last_ts,
        read_ids=(),
        raw_plates=(),
        camera_ids=(),
    )


# ---- the ledger ------------------------------------------------------------------------------


class Ledger:
    """Parking state in a database. Thread-safe; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        tariffs: Mapping[str, Tariff],
        *,
        grace: timedelta = DEFAULT_GRACE,
        window: timedelta = PASSAGE_WINDOW,
    ) -> None:
        if grace < timedelta(0) or window < timedelta(0):
            raise ValueError("grace and window must not be negative")
        self.engine = engine
        self.tariffs = dict(tariffs)
        self.grace = grace
        self.window = window
        self._postgres = engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- inputs ----------------------------------------------------------------------------

    def record(
        self,
        topic_lot: str,
        payload: bytes | bytearray,
        received_at: datetime,
        *,
        topic: str | None = None,
    ) -> RecordOutcome:
        """Record one message received on the reads topic of lot ``topic_lot``.

        ``topic`` (default ``topic_lot``) is what dead letters keep as the topic name.
        Returns once the outcome is committed; raises only when the database fails (then
        nothing was stored: do not acknowledge, the message will be redelivered).
        Blocking: from asyncio, call it in a worker thread (``asyncio.to_thread``).
        """
        require_aware("received_at", received_at)
        payload = bytes(payload)
        topic_name = topic_lot if topic is None else topic
        parsed = parse_read(payload)
        if isinstance(parsed, Rejection):
            return self._reject(topic_name, topic_lot, payload, parsed, received_at)
        if parsed.lot_id != topic_lot:
            why = f"payload lot_id {parsed.lot_id!r} differs from the topic's lot {topic_lot!r}"
            rejection = Rejection(DeadReason.LOT_MISMATCH, why, parsed.read_id)
            return self._reject(topic_name, topic_lot, payload, rejection, received_at)
        if parsed.lot_id not in self.tariffs:
            why = f"no tariff for lot {parsed.lot_id!r}"
            rejection = Rejection(DeadReason.UNKNOWN_LOT, why, parsed.read_id)
            return self._reject(topic_name, topic_lot, payload, rejection, received_at)
        return self._retrying(lambda: self._record(parsed, payload, topic_name, received_at))

    def expire(self, now: datetime) -> tuple[str, ...]:
        """Send what waited past the grace period to review; returns those session ids.

        Pending exits received at least ``grace`` before ``now`` (NO_ENTRY or AMBIGUOUS)
        and open sessions superseded by a later entry known for ``grace`` (NO_EXIT).
        One transaction per lot. Call it periodically (e.g. every minute).
        """
        require_aware("now", now)
        cut = now - self.grace
        with self._transaction() as db:
            lots = set(
                db.exec(select(PendingExitRow.lot_id).where(col(PendingExitRow.since) <= cut))
            )
            lots |= set(
                db.exec(select(SessionRow.lot_id).where(SessionRow.status == SessionStatus.OPEN))
            )
        sent: list[str] = []
        for lot in sorted(lots):
            sent.extend(self._retrying(partial(self._expire_lot, lot, now)))
        return tuple(sent)

    def bind(self, plate: str, account: str, *, at: datetime | None = None) -> BindOutcome:
        """Bind ``plate`` (normalized) to ``account``; charge its debts, each exactly once.

        Binding again replaces the account for later stays; debts already charged stay
        with the account that paid them.
        """
        key = normalize(plate)
        if not key or not _printable_ok(key):
            raise LedgerError(f"not a plate: {plate!r}")
        name = account.strip()
        if not name or not _printable_ok(name):
            raise LedgerError(f"not an account: {account!r}")
        when = datetime.now(UTC) if at is None else at
        require_aware("at", when)
        when = when.astimezone(UTC)
        return self._retrying(lambda: self._bind(key, name, when))

    def bind_many(
        self, pairs: Iterable[tuple[str, str]], *, at: datetime | None = None
    ) -> list[BindOutcome]:
        """``bind`` for each (plate, account) pair, in order (one transaction each)."""
        return [self.bind(plate, account, at=at) for plate, account in pairs]

    # ---- reports ---------------------------------------------------------------------------

    def sessions(self, lot: str | None = None) -> list[SessionReport]:
        """All sessions (of one lot), by the time of their first passage."""
        with self._transaction() as db:
            query = select(SessionRow)
            if lot is not None:
                query = query.where(SessionRow.lot_id == lot)
            rows = sorted(db.exec(query), key=lambda r: (_first_time(r), r.session_id))
            return [_session_report(r) for r in rows]

    def charges(self, account: str | None = None) -> list[ChargeReport]:
        """Every charge (of one account), in the order they were made."""
        with self._transaction() as db:
            query = (
                select(Charge, SessionRow.lot_id, SessionRow.plate)
                .join(SessionRow, col(SessionRow.session_id) == col(Charge.session_id))
                .order_by(col(Charge.id))
            )
            if account is not None:
                query = query.where(Charge.account == account)
            return [
                ChargeReport(c.session_id, lot_id, plate, c.account, c.cents, c.charged_at)
                for c, lot_id, plate in db.exec(query)
            ]

    def charge_totals(self) -> dict[str, int]:
        """Cents charged per account."""
        with self._transaction() as db:
            query = (
                select(Charge.account, func.sum(Charge.cents))
                .group_by(col(Charge.account))
                .order_by(col(Charge.account))
            )
            return {account: int(total) for account, total in db.exec(query)}

    def debts(self, plate: str | None = None) -> list[DebtReport]:
        """Unpaid sessions (of one plate): money owed by plates with no bound account."""
        with self._transaction() as db:
            query = select(SessionRow).where(SessionRow.status == SessionStatus.UNPAID)
            if plate is not None:
                query = query.where(SessionRow.plate == normalize(plate))
            rows = sorted(db.exec(query), key=lambda r: (r.plate, _first_time(r), r.session_id))
            out = []
            for r in rows:
                assert r.entry_at is not None and r.exit_at is not None
                assert r.fee_cents is not None
                out.append(
                    DebtReport(r.session_id, r.lot_id, r.plate, r.entry_at, r.exit_at, r.fee_cents)
                )
            return out

    def dead_letters(self, lot: str | None = None) -> list[DeadLetterReport]:
        """Rejected messages (of one topic lot), oldest first."""
        with self._transaction() as db:
            query = select(DeadLetter).order_by(col(DeadLetter.id))
            if lot is not None:
                query = query.where(DeadLetter.lot_id == lot)
            return [
                DeadLetterReport(
                    id=d.id or 0,
                    topic=d.topic,
                    lot_id=d.lot_id,
                    read_id=d.read_id,
                    reason=DeadReason(d.reason),
                    detail=d.detail,
                    payload=d.payload,
                    payload_text=d.payload_text,
                    received_at=d.received_at,
                )
                for d in db.exec(query)
            ]

    # ---- transactions ----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[DbSession]:
        with DbSession(self.engine, expire_on_commit=False) as db, db.begin():
            yield db

    def _retrying(self, work: Callable[[], T]) -> T:
        for attempt in range(_RETRIES):
            try:
                return work()
            except DBAPIError as exc:
                # Deadlock or serialization failure (PostgreSQL), or a pooled connection
                # found dead (the pool was invalidated): the transaction did nothing, redo it.
                code = getattr(exc.orig, "sqlstate", None)
                again = code in _RETRY_SQLSTATES or exc.connection_invalidated
                if not again or attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _lock(self, db: DbSession, *keys: str) -> None:
        if self._postgres:
            _advisory_lock(db.connection(), keys)

    def _insert_ignore(self, table: Table, key: str) -> Insert:
        """INSERT ... ON CONFLICT (key) DO NOTHING for this database."""
        if self._postgres:
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])

    # ---- record ----------------------------------------------------------------------------

    def _reject(
        self,
        topic: str,
        lot: str,
        payload: bytes,
        rejection: Rejection,
        received_at: datetime,
    ) -> RecordOutcome:
        def work() -> None:
            with self._transaction() as db:
                self._dead_letter(db, topic, lot, payload, rejection, received_at)

        self._retrying(work)
        return RecordOutcome(
            OutcomeKind.DEAD_LETTER, rejection.read_id, rejection.reason, rejection.detail
        )

    def _dead_letter(
        self,
        db: DbSession,
        topic: str,
        lot: str,
        payload: bytes,
        rejection: Rejection,
        received_at: datetime,
    ) -> None:
        # The same bad message replayed is kept once (UNIQUE digest).
        values = {
            "digest": _digest(topic, rejection.reason, payload),
            "topic": topic,
            "lot_id": lot,
            "read_id": rejection.read_id,
            "reason": rejection.reason.value,
            "detail": rejection.detail,
            "payload": payload,
            "payload_text": _text_of(payload),
            "received_at": received_at,
        }
        db.exec(self._insert_ignore(_table("dead_letter"), "digest").values(values))

    def _record(
        self, msg: ReadIn, payload: bytes, topic: str, received_at: datetime
    ) -> RecordOutcome:
        read = msg.to_read()
        with self._transaction() as db:
            self._lock(db, f"lot:{read.lot_id}")
            values = {
                "read_id": read.read_id,
                "lot_id": read.lot_id,
                "camera_id": read.camera_id,
                "direction": read.direction.value,
                "raw_plate": read.raw_plate,
                "plate": read.plate,
                "confidence": read.confidence,
                "ts": read.ts,
                "received_at": received_at,
                "payload": payload.decode("utf-8"),
            }
            insert = self._insert_ignore(_table("read"), "read_id").values(values)
            if db.exec(insert.returning(_table("read").c.id)).first() is None:
                return self._known_read(db, msg, payload, topic, received_at)
            changed = self._apply_read(db, read, received_at)
            return RecordOutcome(OutcomeKind.RECORDED, read.read_id, sessions=changed)

    def _known_read(
        self, db: DbSession, msg: ReadIn, payload: bytes, topic: str, received_at: datetime
    ) -> RecordOutcome:
        old = db.exec(select(ReadRow).where(ReadRow.read_id == msg.read_id)).one()
        same = (
            old.lot_id == msg.lot_id
            and old.camera_id == msg.camera_id
            and old.direction == msg.direction
            and old.raw_plate == msg.plate
            and old.confidence == msg.confidence
            and old.ts == msg.ts
        )
        if same:
            return RecordOutcome(OutcomeKind.DUPLICATE, msg.read_id)
        why = (
            f"read_id {msg.read_id!r} was recorded at {old.received_at.isoformat()} "
            "with different content"
        )
        rejection = Rejection(DeadReason.READ_ID_CONFLICT, why, msg.read_id)
        self._dead_letter(db, topic, msg.lot_id, payload, rejection, received_at)
        return RecordOutcome(OutcomeKind.DEAD_LETTER, msg.read_id, rejection.reason, why)

    def _apply_read(self, db: DbSession, read: Read, received_at: datetime) -> tuple[str, ...]:
        key = lookalike_key(read.plate)
        sessions = db.exec(
            select(SessionRow).where(SessionRow.lot_id == read.lot_id, SessionRow.plate_key == key)
        )
        pending = db.exec(
            select(PendingExitRow, PassageRow)
            .join(PassageRow, col(PassageRow.passage_id) == col(PendingExitRow.passage_id))
            .where(PendingExitRow.lot_id == read.lot_id, PendingExitRow.plate_key == key)
        ).all()
        state = _State(
            sessions={r.session_id: r for r in sessions},
            pending={x.passage_id: x for x, _ in pending},
            passages={p.passage_id: p for _, p in pending},
        )
        nearby = db.exec(
            select(PassageRow).where(
                PassageRow.lot_id == read.lot_id,
                PassageRow.direction == read.direction.value,
                PassageRow.plate == read.plate,
                col(PassageRow.first_ts) <= read.ts + self.window,
                col(PassageRow.last_ts) >= read.ts - self.window,
            )
        )
        state.passages.update((r.passage_id, r) for r in nearby)
        book = state.book(self.grace, self.window)
        events = book.add_read(read, received_at)
        absorbed = next((e.passage for e in events if isinstance(e, ReadAbsorbed)), None)
        if absorbed is not None:
            row = state.passages[absorbed.passage_id]
            row.first_ts = absorbed.first_ts
            row.last_ts = absorbed.last_ts
        else:
            new = book.passage(read.read_id)
            row = PassageRow(
                passage_id=new.passage_id,
                lot_id=new.lot_id,
                direction=new.direction.value,
                plate=new.plate,
                plate_key=new.plate_key,
                first_ts=new.first_ts,
                last_ts=new.last_ts,
            )
        db.add(row)
        db.flush()  # the passage before what refers to it (no ORM relationships to order by)
        db.add(PassageReadRow(read_id=read.read_id, passage_id=row.passage_id))
        return self._write_back(db, state, book, read.lot_id, received_at)

    def _write_back(
        self, db: DbSession, state: _State, book: SessionBook, lot: str, at: datetime
    ) -> tuple[str, ...]:
        """Persist what the book changed; settle the sessions it closed (charged at ``at``)."""
        before = {sid: _session_of(r) for sid, r in state.sessions.items()}
        changed = [s for s in book.sessions(lot) if before.get(s.session_id) != s]
        closed = {s.plate for s in changed if s.status is SessionStatus.CLOSED}
        accounts = self._accounts(db, closed)
        charges: list[Charge] = []
        for s in changed:
            money = None
            if s.status is SessionStatus.CLOSED:
                money = settle_closed(s, self.tariffs[lot], accounts.get(s.plate))
                s = money.session
            row = state.sessions.get(s.session_id)
            if row is None:
                row = SessionRow(
                    session_id=s.session_id,
                    lot_id=s.lot_id,
                    plate=s.plate,
                    plate_key=s.plate_key,
                    status=s.status.value,
                    received_at=s.received_at,
                )
            _fill_session(row, s, money)
            db.add(row)
            if money is not None and money.charge_cents is not None and money.account is not None:
                charges.append(
                    Charge(
                        session_id=s.session_id,
                        account=money.account,
                        cents=money.charge_cents,
                        charged_at=at,
                    )
                )
        after = {p.passage_id: p for p in book.pending_exits() if p.lot_id == lot}
        for pid, old in state.pending.items():
            if pid not in after:
                db.delete(old)
        for pid, p in after.items():
            old_row = state.pending.get(pid)
            if old_row is not None and _pending_of(old_row) == p:
                continue
            if old_row is None:
                db.add(PendingExitRow(**_pending_values(p)))
            else:
                for name, value in _pending_values(p).items():
                    setattr(old_row, name, value)
                db.add(old_row)
        db.flush()
        db.add_all(charges)
        db.flush()
        return tuple(s.session_id for s in changed)

    def _accounts(self, db: DbSession, plates: set[str]) -> dict[str, str]:
        """Accounts bound to ``plates``, holding their locks until the end of the transaction."""
        if not plates:
            return {}
        self._lock(db, *(f"plate:{p}" for p in plates))
        rows = db.exec(select(Binding).where(col(Binding.plate).in_(sorted(plates))))
        return {b.plate: b.account for b in rows}

    # ---- expire and bind -------------------------------------------------------------------

    def _expire_lot(self, lot: str, now: datetime) -> list[str]:
        cut = now - self.grace
        with self._transaction() as db:
            self._lock(db, f"lot:{lot}")
            pending = db.exec(
                select(PendingExitRow).where(
                    PendingExitRow.lot_id == lot, col(PendingExitRow.since) <= cut
                )
            )
            state = _State(sessions={}, pending={r.passage_id: r for r in pending}, passages={})
            open_plates = select(SessionRow.plate).where(
                SessionRow.lot_id == lot, SessionRow.status == SessionStatus.OPEN
            )
            open_rows = db.exec(
                select(SessionRow).where(
                    SessionRow.lot_id == lot, SessionRow.status == SessionStatus.OPEN
                )
            )
            later = db.exec(
                select(SessionRow).where(
                    SessionRow.lot_id == lot,
                    col(SessionRow.entry_at).is_not(None),
                    col(SessionRow.received_at) <= cut,
                    col(SessionRow.plate).in_(open_plates),
                )
            )
            for r in [*open_rows, *later]:
                state.sessions[r.session_id] = r
            if state.pending:
                rows = db.exec(
                    select(PassageRow).where(col(PassageRow.passage_id).in_(list(state.pending)))
                )
                state.passages.update((r.passage_id, r) for r in rows)
            book = state.book(self.grace, self.window)
            events = book.expire(now)
            self._write_back(db, state, book, lot, now)
            return [e.session.session_id for e in events if isinstance(e, SentToReview)]

    def _bind(self, plate: str, account: str, at: datetime) -> BindOutcome:
        with self._transaction() as db:
            self._lock(db, f"plate:{plate}")
            binding = db.get(Binding, plate)
            previous = None if binding is None else binding.account
            if binding is None:
                db.add(Binding(plate=plate, account=account, bound_at=at))
            elif binding.account != account:
                binding.account = account
                binding.bound_at = at
                db.add(binding)
            unpaid = db.exec(
                select(SessionRow).where(
                    SessionRow.plate == plate, SessionRow.status == SessionStatus.UNPAID
                )
            )
            charged: list[ChargeReport] = []
            for row in sorted(unpaid, key=lambda r: (_first_time(r), r.session_id)):
                assert row.fee_cents is not None
                money = collect_debt(_session_of(row), row.fee_cents, account)
                _fill_session(row, money.session, money)
                db.add(row)
                charge = Charge(
                    session_id=row.session_id, account=account, cents=money.fee_cents, charged_at=at
                )
                db.add(charge)
                charged.append(
                    ChargeReport(row.session_id, row.lot_id, plate, account, money.fee_cents, at)
                )
            db.flush()
            return BindOutcome(plate, account, previous, tuple(charged))
