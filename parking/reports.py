"""What the ledger reports (sessions, charges, debts, dead letters, resolutions): plain
records, no database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from citybrain.parking.readcontract import DeadReason
from citybrain.parking.review import Action, Resolution

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
    review_reason: str | None = None
    related: tuple[str, ...] = ()

    def to_json(self) -> dict[str, JSONValue]:
        """The row of ``citybrain parking sessions --json``."""
        return {
            "session_id": self.session_id,
            "lot_id": self.lot_id,
            "plate": self.plate,
            "entry_at": _iso(self.entry_at),
            "exit_at": _iso(self.exit_at),
            "fee_cents": self.fee_cents,
            "status": self.status,
            "account": self.account,
            "review_reason": self.review_reason,
        }


@dataclass(frozen=True)
class ChargeReport:
    session_id: str
    lot_id: str
    plate: str
    account: str
    cents: int
    charged_at: datetime
    attempt: int = 1  # 2, 3, ...: collected again after the payment side declined
    source: str = "exit"  # exit, debt (collected at binding), review (a resolution)

    @property
    def key(self) -> str:
        """The idempotency key of its payment instruction."""
        return charge_key(self.session_id, self.attempt)


def charge_key(session_id: str, attempt: int) -> str:
    return f"charge:{session_id}:{attempt}"


def refund_key(adjustment_id: str) -> str:
    return f"refund:{adjustment_id}"


@dataclass(frozen=True)
class AdjustmentRecord:
    """A refund: money paid back to ``account`` for a session."""

    adjustment_id: str
    session_id: str
    kind: str  # refund
    cents: int
    account: str
    operator: str
    reason: str
    created_at: datetime
    resolution_id: str | None = None

    @property
    def key(self) -> str:
        return refund_key(self.adjustment_id)


@dataclass(frozen=True)
class DisputeRecord:
    dispute_id: str
    session_id: str
    operator: str
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class PaymentResultRecord:
    """What the payment side answered for an instruction (first answer counts)."""

    key: str
    kind: str  # charge, refund
    session_id: str
    status: str  # paid, declined
    received_at: datetime
    detail: str = ""
    reference: str | None = None


@dataclass(frozen=True)
class DebtReport:
    session_id: str
    lot_id: str
    plate: str
    entry_at: datetime | None  # None: a fee set by hand for a stay without that time
    exit_at: datetime | None
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
class ResolutionRecord:
    """A stored resolution of a review item: what was decided, by whom, why and when."""

    resolution_id: str
    item: str
    session_id: str
    action: Action
    operator: str
    reason: str
    created_at: datetime
    other_session_id: str | None = None
    at: datetime | None = None
    cents: int | None = None
    account: str | None = None

    @property
    def request(self) -> Resolution:
        return Resolution(self.action, self.other_session_id, self.at, self.cents, self.account)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
