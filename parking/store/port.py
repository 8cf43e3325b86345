"""The store port: what the ledger needs from a database, and nothing else.

The ledger (``citybrain.parking.ledger``) decides with the pure ``book`` and
``settlement``; a store keeps the rows (``citybrain.parking.tables``) and answers the few
questions a decision needs, inside one transaction:

* ``lock_batch`` / ``lock``: hold the batch's keys (``lot:L``, ``plate:P``) until the end of
  the transaction, taken in sorted order (a store whose transactions do not run side by
  side, SQLite, needs no locks);
* ``known_reads``: which of these read ids are stored already, as what;
* ``load_state``: the state a batch of reads needs (sessions, pending exits and passages
  of its lots and look-alike keys, with the passages' reads); ``load_expiring``: what an
  expiry of one lot needs;
* ``bound_accounts`` / ``binding`` / ``unpaid`` / ``evidence``: money questions;
* ``write``: a batch's outcome, rows to insert, update and delete, parents before
  children (``Write``), in as few round trips as the database allows;
* the back office's few questions (``stored_session``, ``pending_exit``, ``passages``,
  ``resolution``, ...), off the hot path.

Reports run in their own transactions on the ``Store``. Adding a database means adding an
adapter (``citybrain.parking.store.sqlite`` and ``.postgres`` are the two) and naming it
in ``citybrain.parking.store.engine.ADAPTERS``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import Engine

from citybrain.errors import CitybrainError
from citybrain.parking.book import PendingExit, SessionBook
from citybrain.parking.daybook import Period
from citybrain.parking.matching import Session
from citybrain.parking.money import Money
from citybrain.parking.occupancy import Stay
from citybrain.parking.passages import Passage, Read
from citybrain.parking.payments import Instruction
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
from citybrain.parking.store.rows import StoredSession


class LedgerError(CitybrainError):
    """A ledger that cannot be opened or used as asked (bad URL, bad plate, ...)."""


@dataclass
class Loaded:
    """The stored state a decision needs (a batch of reads, or an expiry), loaded in its
    transaction, and the reads (evidence) of those passages where they were loaded."""

    sessions: dict[str, StoredSession]
    pending: dict[str, PendingExit]
    passages: dict[str, Passage]  # in creation order
    evidence: dict[str, list[Read]] = field(default_factory=dict)  # passage id -> its reads

    def book(self, grace: timedelta, window: timedelta) -> SessionBook:
        return SessionBook(
            grace=grace,
            window=window,
            sessions=[s.session for s in self.sessions.values()],
            pending=list(self.pending.values()),
            passages=list(self.passages.values()),
            labelled=[sid for sid, s in self.sessions.items() if s.account is not None],
        )

    def read_ids(self) -> set[str]:
        """The ids of the stored reads loaded as evidence."""
        return {r.read_id for reads in self.evidence.values() for r in reads}

    def plates(self) -> set[str]:
        """Every plate the loaded state was read as (sessions, passages, their reads)."""
        out = {s.session.plate for s in self.sessions.values()}
        out |= {
            s.session.exit_plate for s in self.sessions.values() if s.session.exit_plate is not None
        }
        out |= {p.plate for p in self.passages.values()}
        out |= {read.plate for reads in self.evidence.values() for read in reads}
        return out


@dataclass
class ReviewState:
    """What the review queue is made of (``Store.review_state``): sessions in review that
    no resolution settled, open stays past the cut, exits waiting for their entry, the
    passages of them all with their reads, the sessions they may be paired with, and the
    accounts bound to their plates."""

    reviews: list[StoredSession]
    overstays: list[StoredSession]
    pending: list[PendingExit]
    passages: dict[str, Passage]
    pool: list[Session | PendingExit]
    bindings: dict[str, str]
    disputes: list[tuple[DisputeRecord, Session, Money]] = field(default_factory=list)


@dataclass(frozen=True)
class Write:
    """Rows to write to one table (``citybrain.parking.tables``; dicts of the same keys).

    ``insert``: with ``ignore``, rows whose ``ignore`` column collides are skipped; with
    ``count``, ``Transaction.write`` counts the rows actually inserted (one such per call).
    ``update``: ``SET`` the other columns ``WHERE key = row[key]``. ``delete``: ``rows``
    are ``{key: id}``."""

    kind: Literal["insert", "update", "delete"]
    table: str
    rows: list[dict[str, Any]]
    key: str | None = None  # update, delete
    ignore: str | None = None  # insert
    count: bool = False  # insert


class Transaction(Protocol):
    """One database transaction of the ledger (see the module doc)."""

    def lock_batch(self, keys: Iterable[str]) -> None:
        """``lock``, at the start of recording a batch (a store may also prepare the
        transaction for the batch's key lookups)."""

    def lock(self, keys: Iterable[str]) -> None:
        """Hold ``keys`` until the end of the transaction (all at once, sorted)."""

    def known_reads(self, read_ids: Collection[str]) -> dict[str, tuple[Read, datetime]]:
        """The stored reads among ``read_ids``, with their arrival (UTC)."""

    def load_state(self, reads: Sequence[Read], window: timedelta) -> Loaded:
        """The state the rules need to apply ``reads`` (see ``common._load_state``)."""

    def load_expiring(self, lot: str, cut: datetime) -> Loaded:
        """What expiring ``lot`` needs: its pending exits that arrived at or before
        ``cut`` with their passages, its open sessions, and its sessions entered by their
        plates and received at or before ``cut`` (no evidence)."""

    def bound_accounts(self, plates: Collection[str]) -> dict[str, str]:
        """Plate -> the account bound to it, for the bound ones among ``plates``."""

    def binding(self, plate: str) -> str | None:
        """The account ``plate`` is bound to."""

    def unpaid(self, plate: str, plate_key: str) -> list[StoredSession]:
        """The unpaid sessions of ``plate`` or of its look-alike key."""

    def unpaid_among(self, session_ids: Collection[str]) -> list[StoredSession]:
        """The sessions among ``session_ids`` that are unpaid (now)."""

    def evidence(self, passage_ids: Collection[str]) -> dict[str, list[Read]]:
        """The reads of each passage."""

    def write(self, writes: Sequence[Write]) -> int:
        """Write ``writes`` in order; returns the rows the counted insert added."""

    # The back office's questions (off the hot path).

    def stored_session(self, session_id: str) -> StoredSession | None:
        """The session, with its money columns."""

    def pending_exit(self, lot: str, passage_id: str) -> PendingExit | None:
        """The exit of ``passage_id`` at ``lot`` when it waits for its entry."""

    def passages(self, passage_ids: Collection[str]) -> dict[str, Passage]:
        """The passages, rebuilt from their reads."""

    def resolution(self, item: str) -> ResolutionRecord | None:
        """The resolution of a review item (``review.item_key``)."""

    def last_resolution(self, session_id: str) -> ResolutionRecord | None:
        """The latest resolution of any item of the session."""

    def resolution_by_id(self, resolution_id: str) -> ResolutionRecord | None:
        """The resolution of that id."""

    def paired_into(self, session_id: str) -> str | None:
        """The stay a resolution paired this session into, if any."""

    def money(self, session_id: str) -> Money:
        """The session's charges (every attempt), refunds, and the answers to them."""

    def moneys(self, session_ids: Collection[str]) -> dict[str, Money]:
        """``money`` of several sessions (those with any)."""

    def stored_sessions(self, session_ids: Collection[str]) -> dict[str, StoredSession]:
        """The sessions among these ids."""

    def adjustments(self, adjustment_ids: Collection[str]) -> dict[str, AdjustmentRecord]:
        """The refunds among these ids."""

    def outbox_entries(self, keys: Collection[str]) -> dict[str, Instruction]:
        """The outbox entries (unanswered instructions) among these keys."""

    def due_instructions(self, now: datetime, limit: int) -> list[Instruction]:
        """Up to ``limit`` outbox entries due at ``now``, held for this transaction."""

    def payment_results(self, keys: Collection[str]) -> dict[str, PaymentResultRecord]:
        """The payment side's answers among these instruction keys."""

    def charge_attempts(self, session_ids: Collection[str]) -> dict[str, int]:
        """The last attempt charged for each session that was charged."""

    def adjustment(self, adjustment_id: str) -> AdjustmentRecord | None:
        """The refund of that id."""

    def dispute(self, dispute_id: str) -> DisputeRecord | None:
        """The dispute of that id."""

    def open_dispute(self, session_id: str) -> DisputeRecord | None:
        """The session's dispute that no resolution decided yet."""


class Store(Protocol):
    """A ledger's database: transactions and reports."""

    engine: Engine

    @property
    def parallel_writers(self) -> bool:
        """Whether transactions run side by side (and so take the ``lock``s)."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """A transaction: committed when the block ends, rolled back when it raises."""

    def expiring_lots(self, cut: datetime) -> set[str]:
        """Lots with a pending exit that arrived at or before ``cut``, or an open session."""

    def sessions(self, lot: str | None) -> list[SessionReport]:
        """All sessions (of one lot), by the time of their first passage."""

    def charges(self, account: str | None) -> list[ChargeReport]:
        """Every charge (of one account), in the order they were made."""

    def charge_totals(self) -> dict[str, int]:
        """Cents charged per account."""

    def debts(self, plate: str | None) -> list[DebtReport]:
        """Unpaid sessions (of one normalized plate), by plate, time and id."""

    def dead_letters(self, lot: str | None) -> list[DeadLetterReport]:
        """Rejected messages (of one topic lot), oldest first."""

    def session(self, session_id: str) -> SessionReport | None:
        """One session."""

    def account_money(
        self, account: str
    ) -> tuple[
        list[ChargeReport], list[AdjustmentRecord], dict[str, PaymentResultRecord], list[DebtReport]
    ]:
        """An account's charges, the refunds paid back to it, the answers to them, and the
        debts its declined charges left (still unpaid)."""

    def resolutions(self) -> list[ResolutionRecord]:
        """Every resolution, in the order they were made."""

    def period(self, lot: str, start: datetime, end: datetime) -> Period:
        """What a lot's report or export of ``[start, end)`` is made of."""

    def occupancy(self, overstay_cut: datetime) -> dict[str, tuple[int, int]]:
        """Per lot with open stays: how many, and how many entered before the cut."""

    def stays_between(self, lot: str, start: datetime, end: datetime) -> list[Stay]:
        """The lot's stays with an entry that overlap ``[start, end)``."""

    def review_state(self, lot: str | None, overstay_cut: datetime) -> ReviewState:
        """What the review queue (of one lot) is made of; open stays that entered before
        ``overstay_cut`` count as overstays."""

    def close(self) -> None:
        """Release the connections."""
