"""The parking ledger's database tables (SQLModel), separate from the wire models.

Raw evidence and decisions live in different tables:

* ``read``: every accepted camera read exactly as received (``payload`` is the message
  text); never updated. ``read_id`` is UNIQUE: storing a read twice is impossible.
* ``dead_letter``: every rejected message with its reason; ``payload`` holds the bytes
  verbatim. ``digest`` (topic, reason, payload) is UNIQUE, so a replayed bad message is kept
  once.
* ``passage`` / ``passage_read``: how reads were grouped into passages (decision layer).
* ``session`` / ``pending_exit``: the state of ``citybrain.parking.book.SessionBook``;
  a passage is the entry (or exit) of at most one session (UNIQUE).
* ``binding``: plate -> account; ``charge``: the money asked of an account.
  ``(charge.session_id, charge.attempt)`` is UNIQUE: a session is charged once, and again
  only after the payment side declined the charge (``payment_result``).
* ``adjustment``: refunds, append-only; ``dispute``: charges a driver disputes;
  ``payment_result``: what the payment side answered for each instruction (first answer
  counts).
* ``resolution``: what a person decided about an item of the review queue, with who, why
  and when; append-only, one per item.

Instants are timezone-aware in Python and stored in UTC (``UTCDateTime``). Money is integer
cents. These tables use their own ``MetaData`` (``metadata``), so other SQLModel tables in
the process never leak into the parking migrations.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from citybrain.parking.matching import MatchKind, ReviewReason, SessionStatus
from citybrain.parking.passages import Direction
from citybrain.parking.readcontract import DeadReason
from citybrain.parking.review import Action
from citybrain.parking.times import require_aware

# Alembic's own table, named so it cannot collide with another component's migrations.
VERSION_TABLE = "parking_alembic_version"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PendingReason(StrEnum):
    NO_ENTRY = ReviewReason.NO_ENTRY.value
    AMBIGUOUS = ReviewReason.AMBIGUOUS.value


# Statuses a stored session can have: CLOSED is settled in the same transaction.
STORED_STATUSES = tuple(s.value for s in SessionStatus if s is not SessionStatus.CLOSED)


def _one_of(column: str, values: tuple[str, ...], *, nullable: bool = False) -> str:
    listed = ", ".join(f"'{v}'" for v in values)
    test = f"{column} IN ({listed})"
    return f"{column} IS NULL OR {test}" if nullable else test


def _values(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored in UTC; naive values are refused.

    PostgreSQL gets ``timestamptz``; SQLite, which has no zone type, gets the UTC wall time
    as text (fixed width, so text order is time order). Results are aware, in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        require_aware("a stored instant", value)
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class LedgerModel(SQLModel, registry=registry(metadata=metadata)):
    """Base of the ledger tables: a registry and ``MetaData`` of their own."""


class ReadRow(LedgerModel, table=True):
    """A camera read exactly as received (evidence; never updated)."""

    __tablename__ = "read"
    __table_args__ = (
        CheckConstraint(_one_of("direction", _values(Direction)), name="direction"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence"),
    )

    id: int | None = Field(default=None, primary_key=True)  # arrival order
    read_id: str = Field(sa_type=String, unique=True)
    lot_id: str = Field(sa_type=String)
    camera_id: str = Field(sa_type=String)
    direction: str = Field(sa_type=String)
    raw_plate: str = Field(sa_type=String)  # the plate text as the camera sent it
    plate: str = Field(sa_type=String)  # normalized (plates.normalize)
    confidence: float
    ts: datetime = Field(sa_type=UTCDateTime)  # camera time
    received_at: datetime = Field(sa_type=UTCDateTime)
    payload: str = Field(sa_type=Text)  # the message, verbatim


class DeadLetter(LedgerModel, table=True):
    """A rejected message: the bytes verbatim and why."""

    __tablename__ = "dead_letter"
    __table_args__ = (CheckConstraint(_one_of("reason", _values(DeadReason)), name="reason"),)

    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(sa_type=String, unique=True)  # sha256 of topic, reason, payload
    topic: str = Field(sa_type=String)
    lot_id: str = Field(sa_type=String, index=True)  # the topic's lot
    read_id: str | None = Field(default=None, sa_type=String)  # when one could be read
    reason: str = Field(sa_type=String)
    detail: str = Field(sa_type=Text)
    payload: bytes = Field(sa_type=LargeBinary)  # exactly the bytes received
    payload_text: str | None = Field(default=None, sa_type=Text)  # the same, when UTF-8
    received_at: datetime = Field(sa_type=UTCDateTime)


class PassageRow(LedgerModel, table=True):
    """A passage: reads of one vehicle through one gate (``id`` keeps creation order)."""

    __tablename__ = "passage"
    __table_args__ = (
        CheckConstraint(_one_of("direction", _values(Direction)), name="direction"),
        CheckConstraint("first_ts <= last_ts", name="span"),
        Index(None, "lot_id", "direction", "plate"),
        Index(None, "lot_id", "direction", "plate_key"),  # a read's look-alike passages
    )

    id: int | None = Field(default=None, primary_key=True)
    passage_id: str = Field(sa_type=String, unique=True)  # read_id of its first read
    lot_id: str = Field(sa_type=String)
    direction: str = Field(sa_type=String)
    plate: str = Field(sa_type=String)
    plate_key: str = Field(sa_type=String)
    first_ts: datetime = Field(sa_type=UTCDateTime)
    last_ts: datetime = Field(sa_type=UTCDateTime)


class PassageReadRow(LedgerModel, table=True):
    """Which passage a read was grouped into (each read: exactly one)."""

    __tablename__ = "passage_read"

    read_id: str = Field(sa_type=String, primary_key=True, foreign_key="read.read_id")
    passage_id: str = Field(sa_type=String, foreign_key="passage.passage_id", index=True)


class SessionRow(LedgerModel, table=True):
    """A stay (``matching.Session``) plus its money: fee, account, charged."""

    __tablename__ = "session"
    __table_args__ = (
        CheckConstraint(_one_of("status", STORED_STATUSES), name="status"),
        CheckConstraint(_one_of("matched_by", _values(MatchKind), nullable=True), name="matched"),
        CheckConstraint(
            _one_of("review_reason", _values(ReviewReason), nullable=True), name="review_reason"
        ),
        CheckConstraint("entry_at IS NOT NULL OR exit_at IS NOT NULL", name="has_passage"),
        CheckConstraint("fee_cents IS NULL OR fee_cents >= 0", name="fee"),
        CheckConstraint(
            "status NOT IN ('settled', 'unpaid') OR fee_cents IS NOT NULL", name="decided_fee"
        ),
        CheckConstraint("status <> 'unpaid' OR fee_cents > 0", name="debt"),
        CheckConstraint(
            "NOT charged OR (status = 'settled' AND account IS NOT NULL AND fee_cents > 0)",
            name="charged",
        ),
        Index(None, "lot_id", "plate_key"),
        Index(None, "lot_id", "status"),
        Index(None, "plate", "status"),
    )

    session_id: str = Field(sa_type=String, primary_key=True)
    lot_id: str = Field(sa_type=String)
    plate: str = Field(sa_type=String)  # the entry's plate (the exit's when no entry)
    plate_key: str = Field(sa_type=String)  # plates.lookalike_key(plate)
    status: str = Field(sa_type=String)
    received_at: datetime = Field(sa_type=UTCDateTime)
    entry_passage_id: str | None = Field(
        default=None, sa_type=String, unique=True, foreign_key="passage.passage_id"
    )
    entry_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    exit_passage_id: str | None = Field(
        default=None, sa_type=String, unique=True, foreign_key="passage.passage_id"
    )
    exit_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    exit_plate: str | None = Field(default=None, sa_type=String)
    matched_by: str | None = Field(default=None, sa_type=String)
    review_reason: str | None = Field(default=None, sa_type=String)
    related: str = Field(default="[]", sa_type=Text)  # JSON array of session ids
    fee_cents: int | None = Field(default=None, sa_type=BigInteger)
    account: str | None = Field(default=None, sa_type=String)
    charged: bool = False
    # The tariff's steps as the settlement used them (JSON, ``receipts.breakdown_json``).
    breakdown: str | None = Field(default=None, sa_type=Text)


class PendingExitRow(LedgerModel, table=True):
    """An exit waiting for its entry (``book.PendingExit``)."""

    __tablename__ = "pending_exit"
    __table_args__ = (
        CheckConstraint(_one_of("reason", _values(PendingReason)), name="reason"),
        Index(None, "lot_id", "plate_key"),
    )

    passage_id: str = Field(sa_type=String, primary_key=True, foreign_key="passage.passage_id")
    lot_id: str = Field(sa_type=String)
    plate: str = Field(sa_type=String)
    plate_key: str = Field(sa_type=String)
    at: datetime = Field(sa_type=UTCDateTime)  # camera time of the exit
    since: datetime = Field(sa_type=UTCDateTime)  # arrival: the grace period counts from here
    reason: str = Field(sa_type=String)
    candidates: str = Field(default="[]", sa_type=Text)  # JSON array of session ids


class Binding(LedgerModel, table=True):
    """A plate (normalized) bound to the account that pays its stays."""

    __tablename__ = "binding"

    plate: str = Field(sa_type=String, primary_key=True)
    account: str = Field(sa_type=String)
    bound_at: datetime = Field(sa_type=UTCDateTime)


class ChargeSource(StrEnum):
    EXIT = "exit"  # settled at the exit
    DEBT = "debt"  # a debt collected when its plate was bound
    REVIEW = "review"  # a resolution of the review queue


class Charge(LedgerModel, table=True):
    """Money asked of an account for one session. ``(session_id, attempt)`` UNIQUE: a
    session is charged once (attempt 1); a later attempt exists only after the payment
    side declined the one before it (the stay became a debt, collected again)."""

    __tablename__ = "charge"
    __table_args__ = (
        CheckConstraint("cents > 0", name="cents"),
        CheckConstraint("attempt >= 1", name="attempt"),
        CheckConstraint(_one_of("source", _values(ChargeSource)), name="source"),
        UniqueConstraint("session_id", "attempt"),
    )

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(sa_type=String, foreign_key="session.session_id")
    attempt: int = 1
    account: str = Field(sa_type=String, index=True)
    cents: int = Field(sa_type=BigInteger)
    charged_at: datetime = Field(sa_type=UTCDateTime)
    source: str = Field(default=ChargeSource.EXIT.value, sa_type=String)


class AdjustmentKind(StrEnum):
    REFUND = "refund"  # money paid back to the account that paid


class Adjustment(LedgerModel, table=True):
    """A refund (or another adjustment) of a session's money: append-only, never an edit of
    a charge; ``adjustment_id`` UNIQUE (given or derived: the same refund twice is one)."""

    __tablename__ = "adjustment"
    __table_args__ = (
        CheckConstraint("cents > 0", name="cents"),
        CheckConstraint(_one_of("kind", _values(AdjustmentKind)), name="kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    adjustment_id: str = Field(sa_type=String, unique=True)
    session_id: str = Field(sa_type=String, foreign_key="session.session_id", index=True)
    kind: str = Field(sa_type=String)
    cents: int = Field(sa_type=BigInteger)
    account: str = Field(sa_type=String, index=True)  # who gets the money back
    operator: str = Field(sa_type=String)
    reason: str = Field(sa_type=Text)
    created_at: datetime = Field(sa_type=UTCDateTime)
    resolution_id: str | None = Field(default=None, sa_type=String)  # a dispute's resolution


class Dispute(LedgerModel, table=True):
    """A charge the driver disputes: append-only; resolved by a resolution of its item."""

    __tablename__ = "dispute"

    id: int | None = Field(default=None, primary_key=True)
    dispute_id: str = Field(sa_type=String, unique=True)
    session_id: str = Field(sa_type=String, foreign_key="session.session_id", index=True)
    operator: str = Field(sa_type=String)
    reason: str = Field(sa_type=Text)
    created_at: datetime = Field(sa_type=UTCDateTime)


class PaymentKind(StrEnum):
    CHARGE = "charge"
    REFUND = "refund"


class PaymentStatus(StrEnum):
    PAID = "paid"  # the money moved (a charge collected, a refund paid back)
    DECLINED = "declined"  # it did not: a declined charge makes the stay a debt again


class PaymentResult(LedgerModel, table=True):
    """What the payment side answered for one instruction (its idempotency ``key``):
    append-only, the first answer counts (``key`` UNIQUE)."""

    __tablename__ = "payment_result"
    __table_args__ = (
        CheckConstraint(_one_of("kind", _values(PaymentKind)), name="kind"),
        CheckConstraint(_one_of("status", _values(PaymentStatus)), name="status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_type=String, unique=True)
    kind: str = Field(sa_type=String)
    session_id: str = Field(sa_type=String, foreign_key="session.session_id", index=True)
    status: str = Field(sa_type=String)
    detail: str = Field(default="", sa_type=Text)
    reference: str | None = Field(default=None, sa_type=String)  # the provider's own id
    received_at: datetime = Field(sa_type=UTCDateTime)


class ResolutionRow(LedgerModel, table=True):
    """A person's decision on an item of the review queue (``citybrain.parking.review``):
    append-only, one per item (``item`` UNIQUE), with who decided, why and when."""

    __tablename__ = "resolution"
    __table_args__ = (
        CheckConstraint(_one_of("action", _values(Action)), name="action"),
        CheckConstraint("cents IS NULL OR cents >= 0", name="cents"),
    )

    id: int | None = Field(default=None, primary_key=True)  # the order they were made
    resolution_id: str = Field(sa_type=String, unique=True)  # given, or derived (idempotent)
    item: str = Field(sa_type=String, unique=True)  # review.item_key
    session_id: str = Field(sa_type=String, foreign_key="session.session_id", index=True)
    action: str = Field(sa_type=String)
    other_session_id: str | None = Field(
        default=None, sa_type=String, foreign_key="session.session_id", index=True
    )
    at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # an entry or exit time
    cents: int | None = Field(default=None, sa_type=BigInteger)  # a fee set by hand
    account: str | None = Field(default=None, sa_type=String)  # who pays, named
    operator: str = Field(sa_type=String)
    reason: str = Field(sa_type=Text)
    created_at: datetime = Field(sa_type=UTCDateTime)


class PaymentOutbox(LedgerModel, table=True):
    """A payment instruction not answered yet (``citybrain.parking.payments``): written in
    the transaction that makes its charge or refund, sent until an answer is recorded,
    then deleted (the answer stays in ``payment_result``)."""

    __tablename__ = "payment_outbox"
    __table_args__ = (
        CheckConstraint(_one_of("kind", _values(PaymentKind)), name="kind"),
        CheckConstraint("cents > 0", name="cents"),
    )

    key: str = Field(sa_type=String, primary_key=True)  # the idempotency key
    kind: str = Field(sa_type=String)
    session_id: str = Field(sa_type=String, foreign_key="session.session_id")
    lot_id: str = Field(sa_type=String)
    account: str = Field(sa_type=String)
    cents: int = Field(sa_type=BigInteger)
    created_at: datetime = Field(sa_type=UTCDateTime)
    due_at: datetime = Field(sa_type=UTCDateTime, index=True)  # sent (again) from then on
    sends: int = 0
