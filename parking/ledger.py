"""The parking ledger: camera reads in, sessions, charges and debts out, in a database.

``open_ledger(url)`` opens SQLite (``sqlite:///path.db``: WAL, busy timeout, foreign keys)
or PostgreSQL (``postgresql://user@host/db``, driven by psycopg) and upgrades the schema to
the packaged Alembic head. Then:

* ``record(topic_lot, payload, received_at)`` takes one MQTT message. In one transaction
  it validates the payload against the read contract (``readcontract.check_read``: the
  decision the gateways take too, the lot against the topic's included), stores the read
  as evidence (``read_id`` UNIQUE: a replay is a ``duplicate`` that changes nothing),
  applies the matching rules of ``citybrain.parking.book`` to the persisted state of the
  lot and look-alike key, and settles the sessions that closed (fee by tariff; charged to
  the bound account, or an unpaid debt on the plate). A bad message becomes a
  ``dead_letter`` row with its reason and the bytes verbatim; nothing is ever dropped
  silently.
* ``record_many(items)``: several messages in ONE transaction, with exactly the outcomes
  and stored rows of ``record`` called on each in turn (``record`` is a batch of one). The
  state of the batch's (lot, look-alike key) pairs is loaded in a few queries, the rules
  run in memory read after read (a stay is settled as soon as it closes), and the writes
  go out together: on PostgreSQL one statement of data-modifying ``WITH`` clauses over
  ``unnest`` arrays. About a dozen statements per batch instead of a dozen per read.
* ``expire(now)``: pending exits and stale open sessions past the grace period -> review.
* ``bind(plate, account)``: binds a plate and charges its debts, each exactly once (a debt
  left by a declined charge by the next attempt).
* Every charge is written with its payment instruction (the outbox, ``money_writes``), in
  the same transaction: one instruction per charge, whatever dies when
  (``citybrain.parking.payments``).
* Reports: ``sessions``, ``charges``, ``charge_totals``, ``debts``, ``dead_letters``.

The ledger decides; it does not speak SQL. Its storage is a port,
``citybrain.parking.store.port`` (lock the batch's keys, find known reads, load the state a
batch needs, write a batch's outcome, the money questions, the reports), with one adapter
per database (``store.sqlite``, ``store.postgres``, sharing ``store.common``); rows become
domain values in ``store.rows`` only.

Concurrency: a ``Ledger`` may be shared by threads (each call takes its own connection and
transaction). SQLite transactions start with ``BEGIN IMMEDIATE`` (one writer at a time;
others wait up to the busy timeout). On PostgreSQL a call holds a transaction-scoped
advisory lock on its lot (``record``, ``expire``) and on the plates whose money it decides
(``record``'s settlement, ``bind``), always lot first then plates in sorted order, each
set in one statement; deadlock and serialization failures are retried (so is a batch whose
read id another transaction stored meanwhile). UNIQUE constraints (``read.read_id``,
``charge.session_id``, ``session.entry_passage_id`` / ``exit_passage_id``) back the
guarantees whatever the code does.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from importlib import resources
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from citybrain.parking.book import (
    DEFAULT_GRACE,
    ReadAbsorbed,
    SentToReview,
    SessionBook,
    SessionClosed,
    SessionOpened,
    SessionRevised,
)
from citybrain.parking.matching import Session, SessionStatus, stay_plates
from citybrain.parking.passages import PASSAGE_WINDOW, Read, passage_of
from citybrain.parking.plates import lookalike_key, normalize
from citybrain.parking.readcontract import (
    DeadReason,
    Rejection,
    check_read,
    text_fault,
)
from citybrain.parking.reports import (
    AdjustmentRecord,
    ChargeReport,
    DeadLetterReport,
    DebtReport,
    SessionReport,
)
from citybrain.parking.settlement import (
    Settlement,
    choose_account,
    collect_debt,
    settle_closed,
    settle_stay,
)
from citybrain.parking.store.engine import MIGRATIONS, make_engine, store_for, upgrade
from citybrain.parking.store.port import LedgerError, Loaded, Transaction, Write
from citybrain.parking.store.rows import (
    ADJUSTMENTS,
    BINDINGS,
    CHARGES,
    OUTBOX,
    PASSAGES,
    PENDING,
    BoundPlate,
    StoredSession,
    charge_instruction,
    dead_letter_values,
    read_values,
    refund_instruction,
    session_values,
)
from citybrain.parking.tariff import Tariff, parse_tariffs
from citybrain.parking.times import require_aware

__all__ = [
    "MIGRATIONS",
    "BindOutcome",
    "ChargeReport",
    "DeadLetterReport",
    "DeadReason",
    "DebtReport",
    "Ledger",
    "LedgerError",
    "OutcomeKind",
    "RecordItem",
    "RecordOutcome",
    "Rejection",
    "SessionReport",
    "make_engine",
    "open_ledger",
    "parse_read",
    "upgrade",
]

_RETRIES = 5
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_CHECKED_BATCHES = 50  # after a batch with a stored read id, check this many first
T = TypeVar("T")


# ---- the wire contract (``citybrain.parking.readcontract``) ---------------------------------


def parse_read(payload: bytes) -> Read | Rejection:
    """The read contract's decision on one message, ``ts`` in UTC as the ledger stores it
    (no database involved; the topic's lot is not checked)."""
    return check_read(payload, utc=True)


# ---- outcomes -------------------------------------------------------------------------------


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


class RecordItem(NamedTuple):
    """One MQTT message for ``Ledger.record_many``: the lot of its topic, the bytes as
    received, when they arrived, and (for dead letters) the topic name."""

    topic_lot: str
    payload: bytes | bytearray
    received_at: datetime
    topic: str | None = None


@dataclass(frozen=True)
class _Prepared:
    """A message validated without the database: a read, or why it is rejected."""

    topic: str  # the name dead letters keep
    lot: str  # the topic's lot
    payload: bytes
    received_at: datetime
    msg: Read | None
    rejection: Rejection | None


@dataclass(frozen=True)
class BindOutcome:
    plate: str  # normalized
    account: str
    previous: str | None  # the account the plate was bound to before, if any
    charges: tuple[ChargeReport, ...]  # debts charged now


# ---- opening --------------------------------------------------------------------------------


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


class _Relock(Exception):
    """Plates to lock that sort before plates already held: redo the transaction with
    them locked up front (locks are taken in sorted order, never a cycle)."""

    def __init__(self, plates: set[str]) -> None:
        super().__init__(f"{len(plates)} plates to lock first")
        self.plates = plates


class _Collision(Exception):
    """Another transaction stored one of the batch's read ids meanwhile: redo the batch."""


class Writes:
    """The writes of one transaction, gathered parents before children and handed to the
    store at once by ``flush`` (``Transaction.write``: on PostgreSQL one statement)."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.pending: list[Write] = []
        self.count = 0

    def insert(
        self,
        table: str,
        rows: list[dict[str, Any]],
        *,
        ignore: str | None = None,
        count: bool = False,
    ) -> None:
        if rows:
            self.pending.append(Write("insert", table, rows, ignore=ignore, count=count))

    def update(self, table: str, key: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.pending.append(Write("update", table, rows, key=key))

    def delete(self, table: str, key: str, ids: list[str]) -> None:
        if ids:
            self.pending.append(Write("delete", table, [{key: i} for i in ids], key=key))

    def flush(self) -> int:
        """Write what is gathered; returns the rows the counted inserts added so far."""
        if self.pending:
            writes, self.pending = self.pending, []
            self.count += self.tx.write(writes)
        return self.count


def money_writes(
    writes: Writes,
    charges: Sequence[ChargeReport] = (),
    refunds: Sequence[tuple[AdjustmentRecord, str]] = (),
) -> None:
    """Charges and refunds (with their session's lot), each with its payment instruction in
    the outbox, in the same transaction: exactly one instruction per charge or refund
    (``citybrain.parking.payments``)."""
    writes.insert("charge", [CHARGES.values(c) for c in charges])
    writes.insert("adjustment", [ADJUSTMENTS.values(r) for r, _ in refunds])
    instructions = [
        *(charge_instruction(c) for c in charges),
        *(refund_instruction(r, lot) for r, lot in refunds),
    ]
    writes.insert("payment_outbox", [OUTBOX.values(i) for i in instructions])


def _grown(passage: dict[str, Any]) -> dict[str, Any]:
    """What a read joining a stored passage changes: its plate (re-voted) and its span (the
    look-alike key, lot and direction a passage's reads share)."""
    return {k: passage[k] for k in ("passage_id", "plate", "first_ts", "last_ts")}


def _order_key(s: Session) -> tuple[datetime, str]:
    """Sessions in the order ``SessionBook.sessions`` lists them (first passage, id)."""
    first = s.entry_at if s.entry_at is not None else s.exit_at
    assert first is not None
    return (first, s.session_id)


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
        self.store = store_for(engine)
        self.tariffs = dict(tariffs)
        self.grace = grace
        self.window = window
        # Batches left to check for known read ids before writing (see _record_batch).
        self._check_known = 0

    @property
    def parallel_writers(self) -> bool:
        """Whether transactions on different lots gain from running side by side
        (PostgreSQL: they lock different lots; SQLite has one writer at a time)."""
        return self.store.parallel_writers

    def opener(self) -> Callable[[], Ledger]:
        """A picklable way to open this same ledger again, in another process."""
        return partial(
            open_ledger,
            self.engine.url.render_as_string(hide_password=False),
            tariffs=self.tariffs,
            grace=self.grace,
            window=self.window,
        )

    def close(self) -> None:
        self.store.close()

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
        return self.record_many([RecordItem(topic_lot, bytes(payload), received_at, topic)])[0]

    def record_many(
        self, items: Iterable[RecordItem | tuple[str, bytes | bytearray, datetime]]
    ) -> list[RecordOutcome]:
        """Record several messages in ONE transaction; one outcome per item, in order.

        The outcomes and the stored state are those of ``record`` called on each item in
        turn (a read id twice in one batch: the second is a duplicate or a conflict; a
        later read sees what the earlier ones did), but with a handful of round trips for
        the whole batch. All or nothing: when it raises, nothing of the batch is stored.
        """
        prepared = [self._prepare(RecordItem(*item)) for item in items]
        if not prepared:
            return []
        return self.retrying(lambda: self._record_batch_once(prepared))

    def _record_batch_once(self, batch: list[_Prepared]) -> list[RecordOutcome]:
        """``_record_batch``, first without asking which read ids are already stored.

        Nearly every read arrives once, so the batch is first written as if all its reads
        were new: the read inserts skip stored ids and count what they added, and a stored
        id makes the count fall short (or a passage or link collide): the transaction rolls
        back and the batch is recorded again, checking every id first; so are the next
        batches for a while (a gateway replaying after an outage sends many). Outcomes and
        stored state are the same either way; only the round trips differ. (A stored read
        of the same content is seen among the loaded passages' evidence before anything is
        decided; one of other content collides on its id or its passage's, or trips the
        session book, which assumes new reads: any failure of the first attempt but a
        retryable database error sends the batch to the checked one, where a genuine error
        is raised again.)

        Plates that the loaded state brings in beyond the batch's own are locked after the
        others; when one sorts before a plate already held, the transaction is redone with
        it locked up front (``_Relock``), so that locks are always taken in sorted order."""
        extra: set[str] = set()
        while True:
            try:
                return self._record_batch_checking(batch, extra)
            except _Relock as relock:
                extra |= relock.plates

    def _record_batch_checking(
        self, batch: list[_Prepared], extra: set[str]
    ) -> list[RecordOutcome]:
        if self._check_known <= 0:
            try:
                return self._record_batch(batch, check_known=False, extra=extra)
            except Exception as exc:
                database = isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError)
                if database or isinstance(exc, _Relock):
                    raise  # a deadlock, a lost connection (_retrying's), plates to relock
                self._check_known = _CHECKED_BATCHES
        self._check_known = max(0, self._check_known - 1)
        return self._record_batch(batch, check_known=True, extra=extra)

    def expire(self, now: datetime) -> tuple[str, ...]:
        """Send what waited past the grace period to review; returns those session ids.

        Pending exits received at least ``grace`` before ``now`` (NO_ENTRY or AMBIGUOUS)
        and open sessions superseded by a later entry known for ``grace`` (NO_EXIT).
        One transaction per lot. Call it periodically (e.g. every minute).
        """
        require_aware("now", now)
        lots = self.store.expiring_lots(now - self.grace)
        sent: list[str] = []
        for lot in sorted(lots):
            sent.extend(self.retrying(partial(self._expire_lot, lot, now)))
        return tuple(sent)

    def bind(self, plate: str, account: str, *, at: datetime | None = None) -> BindOutcome:
        """Bind ``plate`` (normalized) to ``account``; charge its debts, each exactly once.

        Binding again replaces the account for later stays; debts already charged stay
        with the account that paid them.
        """
        key = normalize(plate)
        if text_fault(key) is not None:
            raise LedgerError(f"not a plate: {plate!r}")
        name = account.strip()
        if text_fault(name) is not None:
            raise LedgerError(f"not an account: {account!r}")
        when = datetime.now(UTC) if at is None else at
        require_aware("at", when)
        when = when.astimezone(UTC)
        return self.retrying(lambda: self._bind(key, name, when))

    def bind_many(
        self, pairs: Iterable[tuple[str, str]], *, at: datetime | None = None
    ) -> list[BindOutcome]:
        """``bind`` for each (plate, account) pair, in order (one transaction each)."""
        return [self.bind(plate, account, at=at) for plate, account in pairs]

    # ---- reports ---------------------------------------------------------------------------

    def sessions(self, lot: str | None = None) -> list[SessionReport]:
        """All sessions (of one lot), by the time of their first passage."""
        return self.store.sessions(lot)

    def charges(self, account: str | None = None) -> list[ChargeReport]:
        """Every charge (of one account), in the order they were made."""
        return self.store.charges(account)

    def charge_totals(self) -> dict[str, int]:
        """Cents charged per account."""
        return self.store.charge_totals()

    def debts(self, plate: str | None = None) -> list[DebtReport]:
        """Unpaid sessions (of one plate): money owed by plates with no bound account."""
        return self.store.debts(None if plate is None else normalize(plate))

    def dead_letters(self, lot: str | None = None) -> list[DeadLetterReport]:
        """Rejected messages (of one topic lot), oldest first."""
        return self.store.dead_letters(lot)

    # ---- transactions ----------------------------------------------------------------------

    def retrying(self, work: Callable[[], T]) -> T:
        """``work`` (one transaction), redone after a deadlock, a serialization failure, a
        lost connection or a concurrent write of the same read: it did nothing then."""
        for attempt in range(_RETRIES):
            try:
                return work()
            except _Collision:
                if attempt == _RETRIES - 1:
                    raise
                continue
            except DBAPIError as exc:
                # Deadlock or serialization failure (PostgreSQL), or a pooled connection
                # found dead (the pool was invalidated): the transaction did nothing, redo it.
                code = getattr(exc.orig, "sqlstate", None)
                again = code in _RETRY_SQLSTATES or exc.connection_invalidated
                if not again or attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # ---- record ----------------------------------------------------------------------------

    def _prepare(self, item: RecordItem) -> _Prepared:
        require_aware("received_at", item.received_at)
        payload = bytes(item.payload)
        lot = item.topic_lot
        topic = lot if item.topic is None else item.topic
        parsed = check_read(payload, lot, utc=True)
        if isinstance(parsed, Rejection):
            return _Prepared(topic, lot, payload, item.received_at, None, parsed)
        if parsed.lot_id not in self.tariffs:
            why = f"no tariff for lot {parsed.lot_id!r}"
            rejection = Rejection(DeadReason.UNKNOWN_LOT, why, parsed.read_id)
            return _Prepared(topic, lot, payload, item.received_at, None, rejection)
        return _Prepared(topic, lot, payload, item.received_at, parsed, None)

    def _record_batch(
        self, batch: list[_Prepared], *, check_known: bool, extra: AbstractSet[str]
    ) -> list[RecordOutcome]:
        """One transaction: lots and plates locked, reads classified (against the stored
        ones with ``check_known``; otherwise within the batch, every id taken as new), new
        reads applied, all written."""
        outcomes: list[RecordOutcome] = []
        dead: dict[str, dict[str, Any]] = {}  # by digest: a bad message twice is kept once
        fresh: list[tuple[int, Read, datetime, bytes]] = []

        def reject(p: _Prepared, lot: str, rejection: Rejection) -> None:
            values = dead_letter_values(p.topic, lot, p.payload, rejection, p.received_at)
            dead.setdefault(values["digest"], values)
            outcomes.append(
                RecordOutcome(
                    OutcomeKind.DEAD_LETTER, rejection.read_id, rejection.reason, rejection.detail
                )
            )

        with self.store.transaction() as tx:
            valid = [p.msg for p in batch if p.msg is not None]
            # The reads' lots and plates, in one statement (sorted: lots before plates).
            plates = {m.plate for m in valid} | set(extra)
            keys = [*(f"lot:{m.lot_id}" for m in valid), *(f"plate:{p}" for p in plates)]
            tx.lock_batch(keys)
            known = tx.known_reads({m.read_id for m in valid}) if check_known else {}
            for p in batch:
                msg = p.msg
                if msg is None:
                    assert p.rejection is not None
                    reject(p, p.lot, p.rejection)
                    continue
                old = known.get(msg.read_id)
                if old is None:
                    known[msg.read_id] = (msg, p.received_at.astimezone(UTC))
                    fresh.append((len(outcomes), msg, p.received_at, p.payload))
                    outcomes.append(RecordOutcome(OutcomeKind.RECORDED, msg.read_id))
                elif old[0] == msg:  # the same content (a read's fields are its content)
                    outcomes.append(RecordOutcome(OutcomeKind.DUPLICATE, msg.read_id))
                else:
                    why = (
                        f"read_id {msg.read_id!r} was recorded at {old[1].isoformat()} "
                        "with different content"
                    )
                    reject(p, msg.lot_id, Rejection(DeadReason.READ_ID_CONFLICT, why, msg.read_id))
            writes = Writes(tx)
            if fresh:
                changed = self._apply_reads(tx, writes, fresh, plates, check_known)
                for index, sessions in changed.items():
                    outcomes[index] = replace(outcomes[index], sessions=sessions)
            writes.insert("dead_letter", list(dead.values()), ignore="digest")
            if writes.flush() != len(fresh):
                raise _Collision("a read id was stored concurrently")  # rolled back, redone
        return outcomes

    def _apply_reads(
        self,
        tx: Transaction,
        writes: Writes,
        fresh: list[tuple[int, Read, datetime, bytes]],
        locked: AbstractSet[str],
        check_known: bool,
    ) -> dict[int, tuple[str, ...]]:
        """Store new reads and apply the matching rules to them, in order, on the persisted
        state of their (lot, look-alike key); returns the sessions each read changed."""
        reads = [read for _, read, _, _ in fresh]
        writes.insert(
            "read",
            [read_values(read, at, payload) for _, read, at, payload in fresh],
            ignore="read_id",
            count=True,
        )
        state = tx.load_state(reads, self.window)
        if not check_known and not state.read_ids().isdisjoint(r.read_id for r in reads):
            raise _Collision("a read of the batch is stored already")  # redone, checked
        book = state.book(self.grace, self.window)
        # Money: every plate a stay closed by this batch can have been read as is among
        # these (locked with the lots, or after them in order): their accounts read.
        checked = state.plates() | {r.plate for r in reads}
        held = set(locked)
        bindings = self._bound_accounts(tx, checked, held)
        created: list[str] = []  # new passages, in creation order
        grown: set[str] = set()  # loaded passages a read joined
        links: list[dict[str, str]] = []
        changed: dict[int, tuple[str, ...]] = {}
        closed_by: dict[str, tuple[int, datetime]] = {}  # session -> (read index, arrival)
        settled: dict[str, Settlement] = {}
        touched: set[str] = set()
        for index, read, received_at, _ in fresh:
            events = book.add_read(read, received_at)
            absorbed = next((e.passage for e in events if isinstance(e, ReadAbsorbed)), None)
            if absorbed is None:
                pid = read.read_id
                created.append(pid)
            else:
                pid = absorbed.passage_id
                if pid in state.passages:
                    grown.add(pid)
            links.append({"read_id": read.read_id, "passage_id": pid})
            ids: set[str] = set()
            for e in events:
                if isinstance(e, SessionOpened | SentToReview | SessionRevised):
                    ids.add(e.session.session_id)
                elif isinstance(e, SessionClosed):
                    sid = e.session.session_id
                    ids.add(sid)
                    closed_by[sid] = (index, received_at)
                    # Settled at once, before the next read (as one by one): from then on
                    # the stay no longer follows its passages.
                    plates = book.stay_plates(sid)
                    unknown = set(plates) - checked
                    if unknown:  # not foreseen: lock and look up those too
                        bindings |= self._bound_accounts(tx, unknown, held)
                        checked |= unknown
                    money = settle_stay(
                        book.session(sid), self.tariffs[e.session.lot_id], plates, bindings
                    )
                    book.decide(money.session, label_fixed=money.account is not None)
                    settled[sid] = money
            touched |= ids
            changed[index] = tuple(sorted(ids, key=lambda i: _order_key(book.session(i))))
        # Writes, parents before children.
        writes.insert("passage", [PASSAGES.values(book.passage(p)) for p in created])
        writes.update(
            "passage",
            "passage_id",
            [_grown(PASSAGES.values(book.passage(p))) for p in sorted(grown)],
        )
        writes.insert("passage_read", links)
        after = {x.passage_id: x for x in book.pending_exits()}
        before = state.pending
        gone = [pid for pid in before if pid not in after]
        writes.delete("pending_exit", "passage_id", gone)
        self._write_sessions(writes, book, state, touched, settled)
        added = [PENDING.values(x) for pid, x in after.items() if pid not in before]
        writes.insert("pending_exit", added)
        moved = [
            PENDING.values(x) for pid, x in after.items() if pid in before and before[pid] != x
        ]
        writes.update("pending_exit", "passage_id", moved)
        charges = [
            ChargeReport(
                sid,
                money.session.lot_id,
                money.session.plate,
                money.account,
                money.charge_cents,
                closed_by[sid][1],
            )
            for sid, money in sorted(
                settled.items(),
                key=lambda kv: (closed_by[kv[0]][0], _order_key(kv[1].session)),
            )
            if money.charge_cents is not None and money.account is not None
        ]
        money_writes(writes, charges)
        return changed

    def _write_sessions(
        self,
        writes: Writes,
        book: SessionBook,
        state: Loaded,
        touched: set[str],
        settled: dict[str, Settlement],
    ) -> None:
        new: list[dict[str, Any]] = []
        old: list[dict[str, Any]] = []
        for sid in sorted(touched, key=lambda i: _order_key(book.session(i))):
            money = settled.get(sid)
            s = book.session(sid)  # as decided, then shown as later reads of the batch say
            stored = state.sessions.get(sid)
            values = session_values(s, money, stored)
            (new if stored is None else old).append(values)
        writes.insert("session", new)
        writes.update("session", "session_id", old)

    def _bound_accounts(
        self, tx: Transaction, plates: set[str], locked: set[str]
    ) -> dict[str, str]:
        """Accounts bound to ``plates``, holding their locks until the end of the transaction
        (``locked``: the plates this transaction holds, updated). A plate to lock that sorts
        before one already held raises ``_Relock``: locks are taken in sorted order only."""
        if not plates:
            return {}
        new = plates - locked
        if self.store.parallel_writers and new and locked and min(new) < max(locked):
            raise _Relock(new)
        tx.lock(f"plate:{p}" for p in new)
        locked |= new
        return tx.bound_accounts(plates)

    def _write_back(
        self, tx: Transaction, state: Loaded, book: SessionBook, lot: str, at: datetime
    ) -> tuple[str, ...]:
        """Persist what the book changed; settle the sessions it closed (charged at ``at``)."""
        writes = Writes(tx)
        changed = [
            s
            for s in book.sessions(lot)
            if (stored := state.sessions.get(s.session_id)) is None or stored.session != s
        ]
        closed = {s.plate for s in changed if s.status is SessionStatus.CLOSED}
        accounts = self._accounts(tx, closed)
        new: list[dict[str, Any]] = []
        old: list[dict[str, Any]] = []
        charges: list[ChargeReport] = []
        for s in changed:
            money = None
            if s.status is SessionStatus.CLOSED:
                money = settle_closed(s, self.tariffs[lot], accounts.get(s.plate))
                s = money.session
            stored = state.sessions.get(s.session_id)
            (new if stored is None else old).append(session_values(s, money, stored))
            if money is not None and money.charge_cents is not None and money.account is not None:
                charge = ChargeReport(
                    s.session_id, s.lot_id, s.plate, money.account, money.charge_cents, at
                )
                charges.append(charge)
        after = {p.passage_id: p for p in book.pending_exits() if p.lot_id == lot}
        writes.delete("pending_exit", "passage_id", [p for p in state.pending if p not in after])
        writes.insert("session", new)
        writes.update("session", "session_id", old)
        added = [PENDING.values(p) for pid, p in after.items() if pid not in state.pending]
        writes.insert("pending_exit", added)
        moved = [
            PENDING.values(p)
            for pid, p in after.items()
            if pid in state.pending and state.pending[pid] != p
        ]
        writes.update("pending_exit", "passage_id", moved)
        money_writes(writes, charges)
        writes.flush()
        return tuple(s.session_id for s in changed)

    def _accounts(self, tx: Transaction, plates: set[str]) -> dict[str, str]:
        """Accounts bound to ``plates``, holding their locks until the end of the transaction."""
        if not plates:
            return {}
        tx.lock(f"plate:{p}" for p in plates)
        return tx.bound_accounts(plates)

    # ---- expire and bind -------------------------------------------------------------------

    def _expire_lot(self, lot: str, now: datetime) -> list[str]:
        with self.store.transaction() as tx:
            tx.lock([f"lot:{lot}"])
            state = tx.load_expiring(lot, now - self.grace)
            book = state.book(self.grace, self.window)
            events = book.expire(now)
            self._write_back(tx, state, book, lot, now)
            return [e.session.session_id for e in events if isinstance(e, SentToReview)]

    def _debts_of(self, tx: Transaction, plate: str, account: str) -> list[StoredSession]:
        """The unpaid sessions that binding ``plate`` to ``account`` collects (the plate's
        lock is held).

        Those recorded under ``plate``, and those recorded under a look-alike (a misread
        plate) whose stay was also read as ``plate`` and whose accounts
        (``settlement.choose_account`` over every plate the stay was read as, with this
        binding) are exactly ``account``: never a guess between two accounts."""
        rows = tx.unpaid(plate, lookalike_key(plate))
        others = [r for r in rows if r.session.plate != plate]
        if not others:
            return rows
        own = sorted(
            pid
            for r in others
            for pid in (r.session.entry_passage_id, r.session.exit_passage_id)
            if pid
        )
        evidence = tx.evidence(own)
        passages = [passage_of(pid, reads) for pid, reads in evidence.items()]
        stays = {r.session.session_id: stay_plates(r.session, passages) for r in others}
        read_as = {sid: plates for sid, plates in stays.items() if plate in plates}
        if not read_as:
            return [r for r in rows if r.session.plate == plate]
        # Their other plates decide too: locked (one statement, sorted; a deadlock with a
        # recording transaction is retried), then their bindings and the debts read again,
        # after the locks (another binding may have collected one meanwhile).
        plates = {p for ps in read_as.values() for p in ps} - {plate}
        tx.lock(f"plate:{p}" for p in plates)
        bindings = tx.bound_accounts(plates)
        bindings[plate] = account
        ids = [
            r.session.session_id
            for r in rows
            if r.session.plate == plate or r.session.session_id in read_as
        ]
        chosen = []
        for r in tx.unpaid_among(ids):
            if r.session.plate != plate:
                choice = choose_account(r.session, read_as[r.session.session_id], bindings)
                if choice.account != account:
                    continue
            chosen.append(r)
        return chosen

    def _bind(self, plate: str, account: str, at: datetime) -> BindOutcome:
        with self.store.transaction() as tx:
            tx.lock([f"plate:{plate}"])
            previous = tx.binding(plate)
            writes = Writes(tx)
            bound = BINDINGS.values(BoundPlate(plate, account, at))
            if previous is None:
                writes.insert("binding", [bound])
            elif previous != account:
                writes.update("binding", "plate", [bound])
            unpaid = self._debts_of(tx, plate, account)
            charged: list[ChargeReport] = []
            sessions: list[dict[str, Any]] = []
            # A debt left by a declined charge is collected by the next attempt.
            attempts = tx.charge_attempts([r.session.session_id for r in unpaid]) if unpaid else {}
            for row in sorted(unpaid, key=lambda r: _order_key(r.session)):
                assert row.fee_cents is not None
                # A debt recorded under a misread is paid by this plate's account: shown
                # under this plate from now on (the bound reading wins the label).
                money = collect_debt(replace(row.session, plate=plate), row.fee_cents, account)
                sessions.append(session_values(money.session, money, row))
                s = money.session
                attempt = attempts.get(s.session_id, 0) + 1
                charged.append(
                    ChargeReport(
                        s.session_id,
                        s.lot_id,
                        s.plate,
                        account,
                        money.fee_cents,
                        at,
                        attempt,
                        "debt",
                    )
                )
            writes.update("session", "session_id", sessions)
            money_writes(writes, charged)
            writes.flush()
            return BindOutcome(plate, account, previous, tuple(charged))
