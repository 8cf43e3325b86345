"""What the SQL adapters share: the ledger's queries (SQLAlchemy Core over
``citybrain.parking.tables``), the loading of a batch's state, and a base transaction and
store written against them.

An adapter supplies the dialect's pieces: how a list parameter is matched (``KeySql``), how
rows are fetched (``SqlTransaction.rows_many``), how a batch's keyed state is found
(``keyed_state``), locks and writes. Everything that turns rows into domain values goes
through ``citybrain.parking.store.rows``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache
from typing import Any, ClassVar, Protocol, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    not_,
    or_,
    tuple_,
)
from sqlalchemy import select as sa_select

from citybrain.parking.book import PendingExit
from citybrain.parking.daybook import Period
from citybrain.parking.matching import Session, SessionStatus
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
from citybrain.parking.store.port import Loaded, ReviewState, Transaction, Write
from citybrain.parking.store.rows import (
    ADJUSTMENTS,
    CHARGES,
    DEAD_LETTERS,
    DEBTS,
    DISPUTES,
    OUTBOX,
    PAYMENT_RESULTS,
    PENDING,
    READS,
    RESOLUTIONS,
    SESSION_REPORTS,
    StoredSession,
    key_of,
    passage_with,
    stored_session,
)
from citybrain.parking.tables import UTCDateTime, metadata

IN_CHUNK = 500  # ids per IN (...) list
R = TypeVar("R")


def table(name: str) -> Table:
    return metadata.tables[name]


def chunks(items: list[str], size: int = IN_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class KeySql(Protocol):
    """How a dialect matches rows to a list parameter (the adapters' classes)."""

    @staticmethod
    def ids(name: str) -> Any:
        """The right side of ``column IN ...`` for the list parameter ``name``."""

    @staticmethod
    def per_key(name: str, inner: Any, key: Any) -> Any:
        """``inner`` (a select) limited to the rows whose ``key`` is in the list ``name``."""

    @staticmethod
    def keyed(table_name: str) -> Any:
        """The rows of the batch's (lot, look-alike key) pairs (parameters: the adapter's)."""


# The statements of the hot path are built once per dialect (their SQLAlchemy cache keys
# are then memoized too): building and keying a construct costs more than running it.


@cache
def _known_reads_query(sql: type[KeySql]) -> Any:
    c = table("read").c
    columns = (c.read_id, c.lot_id, c.camera_id, c.direction, c.raw_plate, c.confidence)
    return sa_select(*columns, c.ts, c.received_at).where(c.read_id.in_(sql.ids("ids")))


@cache
def _passages_query(sql: type[KeySql]) -> Any:
    passage = table("passage")
    return sa_select(passage).where(passage.c.passage_id.in_(sql.ids("ids")))


@cache
def _bindings_query(sql: type[KeySql]) -> Any:
    binding = table("binding")
    return sql.per_key("ids", sa_select(binding.c.plate, binding.c.account), binding.c.plate)


@cache
def _holders_query(sql: type[KeySql]) -> Any:
    """The sessions that hold any of the passages ``:ids`` (as entry or exit)."""
    c = table("session").c
    held = or_(c.entry_passage_id.in_(sql.ids("ids")), c.exit_passage_id.in_(sql.ids("xids")))
    return sa_select(table("session")).where(held)


@cache
def _evidence_query(sql: type[KeySql]) -> Any:
    link, read = table("passage_read"), table("read")
    c = read.c
    columns = (link.c.passage_id, c.read_id, c.lot_id, c.camera_id, c.direction, c.raw_plate)
    inner = sa_select(*columns, c.confidence, c.ts).join_from(
        link, read, link.c.read_id == c.read_id
    )
    return sql.per_key("pids", inner, link.c.passage_id)


def near(t: Table) -> Any:
    """Passages whose span meets ``[:low, :high]``."""
    low, high = bindparam("low", type_=UTCDateTime), bindparam("high", type_=UTCDateTime)
    return and_(t.c.first_ts <= high, t.c.last_ts >= low)


def _keyed_sessions(sql: type[KeySql]) -> Any:
    """The sessions of the batch's (lot, look-alike key) pairs."""
    return sql.keyed("session")


@cache
def _recent_sessions(sql: type[KeySql]) -> Any:
    """Of those: the open ones, those that entered or left at or after ``:since``, and of
    those that entered before ``:since``, per lot and plate the latest to enter (by entry
    time, then id), once by the plate it was entered under and once by the plate its exit
    was read as. One statement (the server ranks the key's sessions; only these come
    back)."""
    session = table("session")
    c = session.c
    since = bindparam("since", type_=UTCDateTime)
    before = c.entry_at < since
    latest = (c.entry_at.desc(), c.session_id.desc())
    by_plate = func.row_number().over(partition_by=(c.lot_id, c.plate, before), order_by=latest)
    by_exit = func.row_number().over(partition_by=(c.lot_id, c.exit_plate, before), order_by=latest)
    inner = (
        _keyed_sessions(sql)
        .add_columns(
            before.label("before"), by_plate.label("rank_plate"), by_exit.label("rank_exit")
        )
        .subquery("keyed")
    )
    k = inner.c
    first: Any = literal_column("1")  # literals, not parameters: the statement text is sent as is
    latest_before = and_(
        k.before, or_(k.rank_plate == first, and_(k.rank_exit == first, k.exit_plate.is_not(None)))
    )
    is_open = k.status == literal_column(f"'{SessionStatus.OPEN.value}'")
    recent = or_(is_open, k.entry_at >= since, k.exit_at >= since, latest_before)
    return sa_select(*(k[col.name] for col in session.columns)).where(recent)


def _load_state(tx: SqlTransaction, reads: Sequence[Read], window: timedelta) -> Loaded:
    """The sessions and pending exits of the reads' (lot, look-alike key) pairs, and the
    passages the reads may join (same lot, direction and look-alike key, times within the
    window) or that the pending exits and the stays need. A few indexed queries for the
    whole batch (extra state of other keys would not change a decision anyway).

    Not the whole history of a key: a plate that parks at a lot every day would make each
    of its reads load (and convert) every stay it ever had. Every decision the batch can
    take looks at times at or after ``since`` (its earliest read, or pending exit, minus
    two windows): which stay of a plate entered last at or before a time
    (``_latest_entry``), which passage of a plate comes next after a time
    (``entry_conflict``), which stays are open (the look-alike candidates). So the loaded
    sessions are: the open ones, those that entered or left at or after ``since``, and per
    plate the latest to enter before ``since`` (the one any "latest before" reaches back
    to); plus the ones holding a loaded passage. Any set of the key's sessions that holds
    these gives the same decisions as the whole history.

    The adapter finds the keyed rows (``SqlTransaction.keyed_state``); the rest is here."""
    sessions, pending, passages = tx.keyed_state(reads, window)
    # The sessions holding a loaded passage (a passage can outlast ``since`` when its reads
    # keep coming, and so can the stay it belongs to).
    held = {pid for r in sessions.values() for pid in (r.entry_passage_id, r.exit_passage_id)}
    loose = sorted(pid for pid in passages if pid not in held)
    for chunk in chunks(loose):
        for row in tx.rows(_holders_query(tx.sql), {"ids": chunk, "xids": chunk}):
            sessions[row.session_id] = row
    # Pending exits need their passage; an open session's entry is part of its stay
    # (its readings choose the account, its plate the displayed one); so is the other
    # passage of a stay one of whose passages a read may join (the displayed plate is
    # voted over both).
    wanted = set(pending) | {
        r.entry_passage_id
        for r in sessions.values()
        if r.status == SessionStatus.OPEN.value and r.entry_passage_id is not None
    }
    for r in sessions.values():
        if r.entry_passage_id in passages and r.exit_passage_id is not None:
            wanted.add(r.exit_passage_id)
        if r.exit_passage_id in passages and r.entry_passage_id is not None:
            wanted.add(r.entry_passage_id)
    missing = sorted(pid for pid in wanted if pid not in passages)
    for chunk in chunks(missing):
        for row in tx.rows(_passages_query(tx.sql), {"ids": chunk}):
            passages[row.passage_id] = row
    evidence = tx.evidence(sorted(passages))
    return loaded(sessions, pending, passages, evidence)


def loaded(
    sessions: Mapping[str, Any],
    pending: Mapping[str, Any],
    passages: Mapping[str, Any],
    evidence: dict[str, list[Read]],
) -> Loaded:
    """``Loaded`` of rows: passages in creation order, rebuilt from their reads."""
    return Loaded(
        sessions={sid: stored_session(r) for sid, r in sessions.items()},
        pending={pid: PENDING.of(r) for pid, r in pending.items()},
        passages={
            r.passage_id: passage_with(r, evidence.get(r.passage_id, ()))
            for r in sorted(passages.values(), key=lambda r: r.id)
        },
        evidence=evidence,
    )


def first_time(row: Any) -> datetime:
    first: datetime | None = row.entry_at if row.entry_at is not None else row.exit_at
    assert first is not None
    return first


class SqlTransaction:
    """A ledger transaction on a SQLAlchemy connection: the port's questions as the
    shared queries. An adapter subclasses it (``sql``, ``rows_many``, ``keyed_state``,
    ``lock_batch``, ``lock``, ``write``)."""

    sql: ClassVar[type[KeySql]]
    evidence_chunk: ClassVar[int] = IN_CHUNK

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # ---- the adapter's part ----------------------------------------------------------------

    def rows_many(self, selects: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[list[Any]]:
        """The rows of several independent hot-path selects (attributes by column name,
        instants aware in UTC)."""
        raise NotImplementedError

    def keyed_state(
        self, reads: Sequence[Read], window: timedelta
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Rows of the sessions, pending exits and passages of the reads' keys (see
        ``_load_state``), each by its id."""
        raise NotImplementedError

    def lock_batch(self, keys: Iterable[str]) -> None:
        raise NotImplementedError

    def lock(self, keys: Iterable[str]) -> None:
        raise NotImplementedError

    def write(self, writes: Sequence[Write]) -> int:
        raise NotImplementedError

    # ---- shared ----------------------------------------------------------------------------

    def rows(self, stmt: Any, params: Mapping[str, Any]) -> list[Any]:
        return self.rows_many([(stmt, params)])[0]

    def known_reads(self, read_ids: Collection[str]) -> dict[str, tuple[Read, datetime]]:
        known: dict[str, tuple[Read, datetime]] = {}
        for chunk in chunks(sorted(read_ids)):
            for r in self.rows(_known_reads_query(self.sql), {"ids": chunk}):
                known[r.read_id] = (READS.of(r), r.received_at)
        return known

    def load_state(self, reads: Sequence[Read], window: timedelta) -> Loaded:
        return _load_state(self, reads, window)

    def evidence(self, passage_ids: Collection[str]) -> dict[str, list[Read]]:
        out: dict[str, list[Read]] = {}
        query = _evidence_query(self.sql)
        for chunk in chunks(list(passage_ids), self.evidence_chunk):
            for r in self.rows(query, {"pids": chunk}):
                out.setdefault(r.passage_id, []).append(READS.of(r))
        return out

    def bound_accounts(self, plates: Collection[str]) -> dict[str, str]:
        if not plates:
            return {}
        rows = self.rows(_bindings_query(self.sql), {"ids": sorted(plates)})
        return {plate: account for plate, account in rows}

    def load_expiring(self, lot: str, cut: datetime) -> Loaded:
        pending_t, session, passage = table("pending_exit"), table("session"), table("passage")
        p, s = pending_t.c, session.c
        pending = self._select(sa_select(pending_t).where(p.lot_id == lot, p.since <= cut))
        is_open = and_(s.lot_id == lot, s.status == SessionStatus.OPEN.value)
        open_plates = sa_select(s.plate).where(is_open)
        open_rows = self._select(sa_select(session).where(is_open))
        later = self._select(
            sa_select(session).where(
                s.lot_id == lot,
                s.entry_at.is_not(None),
                s.received_at <= cut,
                s.plate.in_(open_plates),
            )
        )
        sessions = {r.session_id: r for r in [*open_rows, *later]}
        waiting = {r.passage_id: r for r in pending}
        passages: dict[str, Any] = {}
        if waiting:
            query = sa_select(passage).where(passage.c.passage_id.in_(list(waiting)))
            passages = {r.passage_id: r for r in self._select(query)}
        return loaded(sessions, waiting, passages, {})

    def binding(self, plate: str) -> str | None:
        b = table("binding").c
        found = self._select(sa_select(b.account).where(b.plate == plate))
        return None if not found else str(found[0].account)

    def unpaid(self, plate: str, plate_key: str) -> list[StoredSession]:
        c = table("session").c
        query = sa_select(table("session")).where(
            c.status == SessionStatus.UNPAID.value, or_(c.plate == plate, c.plate_key == plate_key)
        )
        return [stored_session(r) for r in self._select(query)]

    def unpaid_among(self, session_ids: Collection[str]) -> list[StoredSession]:
        c = table("session").c
        query = sa_select(table("session")).where(
            c.session_id.in_(list(session_ids)), c.status == SessionStatus.UNPAID.value
        )
        return [stored_session(r) for r in self._select(query)]

    def _select(self, query: Any) -> list[Any]:
        """A select off the hot path, through SQLAlchemy."""
        return list(self.conn.execute(query))

    # ---- the back office (off the hot path) ------------------------------------------------

    def stored_session(self, session_id: str) -> StoredSession | None:
        s = table("session")
        found = self._select(sa_select(s).where(s.c.session_id == session_id))
        return stored_session(found[0]) if found else None

    def pending_exit(self, lot: str, passage_id: str) -> PendingExit | None:
        p = table("pending_exit")
        query = sa_select(p).where(p.c.lot_id == lot, p.c.passage_id == passage_id)
        found = self._select(query)
        return PENDING.of(found[0]) if found else None

    def passages(self, passage_ids: Collection[str]) -> dict[str, Passage]:
        """The passages, rebuilt from their reads."""
        ids = sorted(set(passage_ids))
        if not ids:
            return {}
        evidence = self.evidence(ids)
        rows = self._select(
            sa_select(table("passage")).where(table("passage").c.passage_id.in_(ids))
        )
        return {r.passage_id: passage_with(r, evidence.get(r.passage_id, ())) for r in rows}

    def resolution(self, item: str) -> ResolutionRecord | None:
        r = table("resolution")
        found = self._select(sa_select(r).where(r.c.item == item))
        return RESOLUTIONS.of(found[0]) if found else None

    def last_resolution(self, session_id: str) -> ResolutionRecord | None:
        r = table("resolution")
        query = sa_select(r).where(r.c.session_id == session_id).order_by(r.c.id.desc()).limit(1)
        found = self._select(query)
        return RESOLUTIONS.of(found[0]) if found else None

    def resolution_by_id(self, resolution_id: str) -> ResolutionRecord | None:
        r = table("resolution")
        found = self._select(sa_select(r).where(r.c.resolution_id == resolution_id))
        return RESOLUTIONS.of(found[0]) if found else None

    def money(self, session_id: str) -> Money:
        """The session's charges (every attempt), refunds, and the answers to them."""
        return self.moneys([session_id]).get(session_id, Money())

    def moneys(self, session_ids: Collection[str]) -> dict[str, Money]:
        """``money`` of several sessions (those with any), in a few queries."""
        c, a = table("charge").c, table("adjustment")
        charges: dict[str, list[ChargeReport]] = {}
        refunds: dict[str, list[AdjustmentRecord]] = {}
        for chunk in chunks(sorted(set(session_ids))):
            for row in self._select(_charges_query().where(c.session_id.in_(chunk))):
                charges.setdefault(row.session_id, []).append(CHARGES.of(row))
            query = sa_select(a).where(a.c.session_id.in_(chunk)).order_by(a.c.id)
            for row in self._select(query):
                refunds.setdefault(row.session_id, []).append(ADJUSTMENTS.of(row))
        keys = [x.key for xs in charges.values() for x in xs]
        keys += [x.key for xs in refunds.values() for x in xs]
        results = self.payment_results(keys)
        return {
            sid: Money(tuple(charges.get(sid, ())), tuple(refunds.get(sid, ())), results)
            for sid in set(charges) | set(refunds)
        }

    def stored_sessions(self, session_ids: Collection[str]) -> dict[str, StoredSession]:
        return self._keyed("session", "session_id", session_ids, stored_session)

    def adjustments(self, adjustment_ids: Collection[str]) -> dict[str, AdjustmentRecord]:
        return self._keyed("adjustment", "adjustment_id", adjustment_ids, ADJUSTMENTS.of)

    def outbox_entries(self, keys: Collection[str]) -> dict[str, Instruction]:
        """The outbox entries (unanswered instructions) among these keys."""
        return self._keyed("payment_outbox", "key", keys, OUTBOX.of)

    def _keyed(
        self, name: str, column: str, keys: Collection[str], of: Callable[[Any], R]
    ) -> dict[str, R]:
        """The rows of table ``name`` whose ``column`` is among ``keys``, made domain values
        by ``of``, by key (a statement built once per dialect, keys as its list parameter)."""
        query = _keyed_query(self.sql, name, column)
        out: dict[str, R] = {}
        for chunk in chunks(sorted(set(keys))):
            for row in self.rows(query, {"keys": chunk}):
                out[getattr(row, column)] = of(row)
        return out

    def due_instructions(self, now: datetime, limit: int) -> list[Instruction]:
        """Up to ``limit`` outbox entries due at ``now``, oldest due first, held for this
        transaction (PostgreSQL: rows another transaction holds are skipped)."""
        rows = self.rows(_due_query(), {"now": now, "limit": limit})
        return [OUTBOX.of(row) for row in rows]

    def payment_results(self, keys: Collection[str]) -> dict[str, PaymentResultRecord]:
        return self._keyed("payment_result", "key", keys, PAYMENT_RESULTS.of)

    def charge_attempts(self, session_ids: Collection[str]) -> dict[str, int]:
        """The last attempt charged for each session that was charged."""
        c = table("charge").c
        out: dict[str, int] = {}
        for chunk in chunks(sorted(set(session_ids))):
            query = (
                sa_select(c.session_id, func.max(c.attempt))
                .where(c.session_id.in_(chunk))
                .group_by(c.session_id)
            )
            out.update((sid, int(n)) for sid, n in self._select(query))
        return out

    def adjustment(self, adjustment_id: str) -> AdjustmentRecord | None:
        a = table("adjustment")
        found = self._select(sa_select(a).where(a.c.adjustment_id == adjustment_id))
        return ADJUSTMENTS.of(found[0]) if found else None

    def dispute(self, dispute_id: str) -> DisputeRecord | None:
        d = table("dispute")
        found = self._select(sa_select(d).where(d.c.dispute_id == dispute_id))
        return DISPUTES.of(found[0]) if found else None

    def open_dispute(self, session_id: str) -> DisputeRecord | None:
        """The session's dispute that no resolution decided yet."""
        d, r = table("dispute"), table("resolution")
        decided = exists().where(r.c.item == literal("dispute:", String) + d.c.dispute_id)
        query = sa_select(d).where(d.c.session_id == session_id, not_(decided)).order_by(d.c.id)
        found = self._select(query)
        return DISPUTES.of(found[0]) if found else None

    def paired_into(self, session_id: str) -> str | None:
        """The stay a resolution paired this session into (it was retired then)."""
        r = table("resolution")
        query = sa_select(r.c.session_id).where(r.c.other_session_id == session_id)
        found = self._select(query)
        return str(found[0].session_id) if found else None


class SqlStore:
    """A ledger store on a SQLAlchemy engine: transactions of the adapter's kind, and the
    reports (SQLAlchemy Core, the same on every dialect)."""

    transaction_type: ClassVar[type[SqlTransaction]]
    parallel_writers: ClassVar[bool] = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self.engine.begin() as conn:
            yield self.transaction_type(conn)

    def close(self) -> None:
        self.engine.dispose()

    def _select(self, query: Any) -> list[Any]:
        with self.engine.begin() as conn:
            return list(conn.execute(query))

    def expiring_lots(self, cut: datetime) -> set[str]:
        p, s = table("pending_exit").c, table("session").c
        with self.engine.begin() as conn:
            lots = set(conn.execute(sa_select(p.lot_id).where(p.since <= cut)).scalars())
            query = sa_select(s.lot_id).where(s.status == SessionStatus.OPEN.value)
            lots |= set(conn.execute(query).scalars())
        return lots

    def sessions(self, lot: str | None) -> list[SessionReport]:
        session = table("session")
        query = sa_select(session)
        if lot is not None:
            query = query.where(session.c.lot_id == lot)
        rows = sorted(self._select(query), key=lambda r: (first_time(r), r.session_id))
        return [SESSION_REPORTS.of(r) for r in rows]

    def charges(self, account: str | None) -> list[ChargeReport]:
        query = _charges_query()
        if account is not None:
            query = query.where(table("charge").c.account == account)
        return [CHARGES.of(r) for r in self._select(query)]

    def charge_totals(self) -> dict[str, int]:
        """Cents charged per account, charges in force (not declined)."""
        c, r = table("charge").c, table("payment_result").c
        key = _charge_key_sql()
        declined = exists().where(r.key == key, r.status == "declined")
        query = (
            sa_select(c.account, func.sum(c.cents))
            .where(not_(declined))
            .group_by(c.account)
            .order_by(c.account)
        )
        return {account: int(total) for account, total in self._select(query)}

    def account_money(
        self, account: str
    ) -> tuple[
        list[ChargeReport], list[AdjustmentRecord], dict[str, PaymentResultRecord], list[DebtReport]
    ]:
        """An account's charges, the refunds paid back to it, the answers to them, and the
        debts its declined charges left (still unpaid)."""
        c, a = table("charge").c, table("adjustment")
        with self.transaction() as tx:
            assert isinstance(tx, SqlTransaction)
            charges = [
                CHARGES.of(r) for r in tx._select(_charges_query().where(c.account == account))
            ]
            query = sa_select(a).where(a.c.account == account).order_by(a.c.id)
            refunds = [ADJUSTMENTS.of(r) for r in tx._select(query)]
            results = tx.payment_results([*(x.key for x in charges), *(x.key for x in refunds)])
            declined = sorted(
                {
                    x.session_id
                    for x in charges
                    if x.key in results and results[x.key].status == "declined"
                }
            )
            s = table("session")
            debts = [
                DEBTS.of(r)
                for chunk in chunks(declined)
                for r in tx._select(
                    sa_select(s).where(
                        s.c.session_id.in_(chunk), s.c.status == SessionStatus.UNPAID.value
                    )
                )
            ]
        return charges, refunds, results, sorted(debts, key=lambda d: d.session_id)

    def debts(self, plate: str | None) -> list[DebtReport]:
        session = table("session")
        query = sa_select(session).where(session.c.status == SessionStatus.UNPAID.value)
        if plate is not None:
            query = query.where(session.c.plate == plate)
        rows = sorted(self._select(query), key=lambda r: (r.plate, first_time(r), r.session_id))
        return [DEBTS.of(r) for r in rows]

    def dead_letters(self, lot: str | None) -> list[DeadLetterReport]:
        dead = table("dead_letter")
        query = sa_select(dead).order_by(dead.c.id)
        if lot is not None:
            query = query.where(dead.c.lot_id == lot)
        return [DEAD_LETTERS.of(r) for r in self._select(query)]

    # ---- the back office -------------------------------------------------------------------

    def session(self, session_id: str) -> SessionReport | None:
        s = table("session")
        found = self._select(sa_select(s).where(s.c.session_id == session_id))
        return SESSION_REPORTS.of(found[0]) if found else None

    def occupancy(self, overstay_cut: datetime) -> dict[str, tuple[int, int]]:
        """Per lot with open stays: how many, and how many entered before the cut."""
        c = table("session").c
        older = func.sum(case((c.entry_at < overstay_cut, 1), else_=0))
        query = (
            sa_select(c.lot_id, func.count(), older)
            .where(c.status == SessionStatus.OPEN.value)
            .group_by(c.lot_id)
        )
        return {lot: (int(n), int(over or 0)) for lot, n, over in self._select(query)}

    def stays_between(self, lot: str, start: datetime, end: datetime) -> list[Stay]:
        """The lot's stays with an entry that overlap ``[start, end)``: decided ones (both
        times), and open ones."""
        c = table("session").c
        decided = (SessionStatus.SETTLED.value, SessionStatus.UNPAID.value)
        timed = and_(c.exit_at.is_not(None), c.exit_at > start)
        stays = or_(
            and_(c.status.in_(decided), timed),
            and_(c.status == SessionStatus.REVIEW.value, timed),  # priced, accounts disagree
            c.status == SessionStatus.OPEN.value,
        )
        query = sa_select(c.entry_at, c.exit_at).where(
            c.lot_id == lot, c.entry_at.is_not(None), c.entry_at < end, stays
        )
        return [Stay(entry, leave) for entry, leave in self._select(query)]

    def period(self, lot: str, start: datetime, end: datetime) -> Period:
        """What a lot's report or export of ``[start, end)`` is made of
        (``daybook.Period``)."""
        s, a, x, r = (table(n) for n in ("session", "adjustment", "payment_result", "resolution"))
        c = table("charge").c
        sc = s.c

        def during(column: Any) -> Any:
            return and_(column >= start, column < end)

        ended = or_(during(sc.exit_at), and_(sc.exit_at.is_(None), during(sc.entry_at)))
        of_lot = sc.lot_id == lot
        with self.transaction() as tx:
            assert isinstance(tx, SqlTransaction)
            sessions = [
                SESSION_REPORTS.of(row) for row in tx._select(sa_select(s).where(of_lot, ended))
            ]
            ids = {y.session_id for y in sessions}
            declined = sa_select(x.c.session_id).join_from(x, s, x.c.session_id == sc.session_id)
            ids |= {
                row.session_id
                for row in tx._select(declined.where(of_lot, during(x.c.received_at)))
            }
            charges: dict[tuple[str, int], ChargeReport] = {}
            refunds: dict[str, AdjustmentRecord] = {}
            by_session = sa_select(a).join_from(a, s, a.c.session_id == sc.session_id)
            for chunk in chunks(sorted(ids)):
                for row in tx._select(_charges_query().where(c.session_id.in_(chunk))):
                    charge = CHARGES.of(row)
                    charges[(charge.session_id, charge.attempt)] = charge
                for row in tx._select(by_session.where(a.c.session_id.in_(chunk))):
                    refunds[row.adjustment_id] = ADJUSTMENTS.of(row)
            for row in tx._select(_charges_query().where(of_lot, during(c.charged_at))):
                charge = CHARGES.of(row)
                charges[(charge.session_id, charge.attempt)] = charge
            for row in tx._select(by_session.where(of_lot, during(a.c.created_at))):
                refunds[row.adjustment_id] = ADJUSTMENTS.of(row)
            keys = [*(y.key for y in charges.values()), *(y.key for y in refunds.values())]
            results = tx.payment_results(keys)
            decided = sa_select(r).join_from(r, s, r.c.session_id == sc.session_id)
            resolutions = [
                RESOLUTIONS.of(row)
                for row in tx._select(
                    decided.where(of_lot, during(r.c.created_at)).order_by(r.c.id)
                )
            ]
        order = sorted(charges.values(), key=lambda y: (y.charged_at, y.session_id, y.attempt))
        return Period(
            lot,
            start,
            end,
            tuple(sorted(sessions, key=lambda y: (first_time(y), y.session_id))),
            tuple(order),
            tuple(sorted(refunds.values(), key=lambda y: (y.created_at, y.adjustment_id))),
            results,
            tuple(resolutions),
        )

    def resolutions(self) -> list[ResolutionRecord]:
        r = table("resolution")
        return [RESOLUTIONS.of(row) for row in self._select(sa_select(r).order_by(r.c.id))]

    def review_state(self, lot: str | None, overstay_cut: datetime) -> ReviewState:
        s, p = table("session"), table("pending_exit")
        c = s.c
        # Not resolved as a review item, nor retired into a stay by a pairing.
        unresolved = _unresolved("review:")
        where_lot = [] if lot is None else [c.lot_id == lot]
        with self.transaction() as tx:
            assert isinstance(tx, SqlTransaction)
            reviews = tx._select(
                sa_select(s).where(c.status == SessionStatus.REVIEW.value, unresolved, *where_lot)
            )
            overstays = tx._select(
                sa_select(s).where(
                    c.status == SessionStatus.OPEN.value,
                    c.entry_at < overstay_cut,
                    _unresolved("overstay:"),
                    *where_lot,
                )
            )
            query = sa_select(p) if lot is None else sa_select(p).where(p.c.lot_id == lot)
            pending = [PENDING.of(r) for r in tx._select(query)]
            items = [stored_session(r) for r in [*reviews, *overstays]]
            pairs = {(x.session.lot_id, x.session.plate_key) for x in items}
            pairs |= {(x.lot_id, key_of(x.plate)) for x in pending}
            open_or_half = or_(
                c.status == SessionStatus.OPEN.value,
                and_(
                    c.status == SessionStatus.REVIEW.value,
                    or_(c.entry_at.is_(None), c.exit_at.is_(None)),
                    unresolved,
                ),
            )
            ordered = sorted(pairs)
            pool: list[Session | PendingExit] = []
            for start in range(0, len(ordered), IN_CHUNK):
                keyed = tuple_(c.lot_id, c.plate_key).in_(ordered[start : start + IN_CHUNK])
                rows = tx._select(sa_select(s).where(keyed, open_or_half))
                pool.extend(stored_session(r).session for r in rows)
            pool.extend(x for x in pending if (x.lot_id, key_of(x.plate)) in pairs)
            pids = {
                pid
                for x in items
                for pid in (x.session.entry_passage_id, x.session.exit_passage_id)
                if pid is not None
            } | {x.passage_id for x in pending}
            d, r = table("dispute"), table("resolution")
            decided = exists().where(r.c.item == literal("dispute:", String) + d.c.dispute_id)
            query = sa_select(d).where(not_(decided)).order_by(d.c.id)
            disputes = []
            for row in tx._select(query):
                record = DISPUTES.of(row)
                disputed = tx.stored_session(record.session_id)
                assert disputed is not None
                if lot is None or disputed.session.lot_id == lot:
                    disputes.append((record, disputed.session, tx.money(record.session_id)))
                    s_ = disputed.session
                    pids |= {p for p in (s_.entry_passage_id, s_.exit_passage_id) if p}
            passages = tx.passages(pids)
            plates = {plate for ps in passages.values() for plate in ps.plates}
            plates |= {x.session.plate for x in items}
            bindings = tx.bound_accounts(plates)
        return ReviewState(
            reviews=[x for x in items if x.session.status is SessionStatus.REVIEW],
            overstays=[x for x in items if x.session.status is SessionStatus.OPEN],
            pending=pending,
            passages=passages,
            pool=pool,
            bindings=bindings,
            disputes=disputes,
        )


@cache
def _keyed_query(sql: type[KeySql], name: str, column: str) -> Any:
    t = table(name)
    return sa_select(t).where(t.c[column].in_(sql.ids("keys")))


@cache
def _due_query() -> Any:
    o = table("payment_outbox")
    return (
        sa_select(o)
        .where(o.c.due_at <= bindparam("now", type_=UTCDateTime))
        .order_by(o.c.due_at, o.c.key)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )


def _charges_query() -> Any:
    """Charges with their session's lot and plate, in the order they were made."""
    charge, s = table("charge"), table("session").c
    c = charge.c
    columns = (c.session_id, s.lot_id, s.plate, c.account, c.cents, c.charged_at)
    return (
        sa_select(*columns, c.attempt, c.source)
        .join_from(charge, table("session"), s.session_id == c.session_id)
        .order_by(c.id)
    )


def _charge_key_sql() -> Any:
    """A charge's payment key in SQL (``reports.charge_key``)."""
    c = table("charge").c
    return (
        literal("charge:", String) + c.session_id + literal(":", String) + cast(c.attempt, String)
    )


def _unresolved(prefix: str) -> Any:
    """A session (``session`` in the select) without a resolution of its item ``prefix``
    + id, and (a review item) not retired into another stay by a pairing."""
    s, r = table("session"), table("resolution")
    item = literal(prefix, String) + s.c.session_id
    resolved = exists().where(r.c.item == item)
    if prefix != "review:":
        return not_(resolved)
    retired = exists().where(r.c.other_session_id == s.c.session_id)
    return and_(not_(resolved), not_(retired))


def pairs_of(reads: Sequence[Read]) -> set[tuple[str, str]]:
    """The (lot, look-alike key) pairs of ``reads``."""
    return {(r.lot_id, key_of(r.plate)) for r in reads}


def gates_of(reads: Sequence[Read]) -> set[tuple[str, str, str]]:
    """The (lot, direction, look-alike key) triples of ``reads``."""
    return {(r.lot_id, r.direction.value, key_of(r.plate)) for r in reads}


def since_of(reads: Sequence[Read], window: timedelta) -> tuple[datetime, datetime, datetime]:
    """(low, high, since): the span the batch's passages may meet, and the earliest time a
    decision of the batch looks at (before any pending exit's)."""
    low = min(r.ts for r in reads) - window
    high = max(r.ts for r in reads) + window
    return low, high, low - window


__all__ = ["SqlStore", "SqlTransaction", "Write"]
