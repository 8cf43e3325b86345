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
* ``bind(plate, account)``: binds a plate and charges its debts, each exactly once.
* Reports: ``sessions``, ``charges``, ``charge_totals``, ``debts``, ``dead_letters``.

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

import hashlib
import json
import time
import tomllib
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache, lru_cache, partial
from importlib import resources
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal_column,
    or_,
    true,
    update,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
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
    SessionClosed,
    SessionOpened,
    SessionRevised,
)
from citybrain.parking.matching import (
    MatchKind,
    ReviewReason,
    Session,
    SessionStatus,
    stay_plates,
)
from citybrain.parking.passages import PASSAGE_WINDOW, Direction, Passage, Read, passage_of
from citybrain.parking.plates import lookalike_key, normalize
from citybrain.parking.readcontract import (
    DeadReason,
    Rejection,
    check_read,
    text_fault,
)
from citybrain.parking.reports import ChargeReport, DebtReport, SessionReport
from citybrain.parking.settlement import (
    Settlement,
    choose_account,
    collect_debt,
    settle_closed,
    settle_stay,
)
from citybrain.parking.tables import (
    Binding,
    Charge,
    DeadLetter,
    PassageRow,
    PendingExitRow,
    SessionRow,
    UTCDateTime,
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
    "RecordItem",
    "RecordOutcome",
    "Rejection",
    "SessionReport",
    "make_engine",
    "open_ledger",
    "parse_read",
    "upgrade",
]

SQLITE_BUSY_MS = 30_000
MIGRATIONS = "citybrain.parking:migrations"  # Alembic script location (package resource)
_RETRIES = 5
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_CHECKED_BATCHES = 50  # after a batch with a stored read id, check this many first
T = TypeVar("T")


class LedgerError(CitybrainError):
    """A ledger that cannot be opened or used as asked (bad URL, bad plate, ...)."""


# ---- the wire contract (``citybrain.parking.readcontract``) ---------------------------------


def parse_read(payload: bytes) -> Read | Rejection:
    """The read contract's decision on one message, ``ts`` in UTC as the ledger stores it
    (no database involved; the topic's lot is not checked)."""
    return check_read(payload, utc=True)


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
        # psycopg never prepares a statement on the server (its default prepares one that
        # ran 5 times): each execution is planned for its own parameters; see _driver_rows.
        engine = create_engine(parsed, connect_args={"prepare_threshold": None})
        event.listen(engine, "connect", _postgresql_connect)
        return engine
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


def _postgresql_connect(dbapi_connection: Any, _record: Any) -> None:
    # No JIT: PostgreSQL compiles a statement on every execution once its estimated cost
    # passes jit_above_cost, which stale estimates (autovacuum may be off or late on
    # tables that only grow) or a plan priced with a disabled scan reach: tens of ms per
    # statement (with jit_above_cost = 0 the server spent 5,720 µs of CPU per read
    # instead of ~120). Committed, so that the pool's reset (a rollback) keeps it.
    # (The hot path's own statements are planned for each execution: ``_driver_rows``.)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET jit = off")
    finally:
        cursor.close()
    dbapi_connection.commit()


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


def _advisory_lock(connection: Connection, keys: Iterable[str], *, lookups: bool = False) -> None:
    """PostgreSQL transaction-scoped locks, all in one statement, taken in sorted order
    (code point order, as Python sorts): no lock cycles between transactions.

    PostgreSQL evaluates volatile functions of a select list after its ORDER BY.

    ``lookups``: in the same round trip, the transaction's planner is told to reach rows
    through the indexes only (no table scans, no hash or merge joins). Every statement
    of recording a batch looks up a few keys given in arrays; left to the statistics, a
    table that grew since its last ANALYZE (a new ledger, a busy hour) is taken to be
    small and scanned whole, once per statement, at a cost growing with the table. Index
    probes cost a little more than a scan of a table of a few thousand rows, and the same
    at any size: in a 60,000-read run the server's CPU per read stayed at 150-240 µs,
    where the planner's own plans started near 100 and reached 330 (and kept growing)."""
    ordered = sorted(set(keys))
    statements: list[tuple[str, Mapping[str, Any]]] = [(_LOOKUPS, {})] if lookups else []
    if ordered:
        statements.append((_LOCK, {"keys": ordered}))
    if statements:
        _driver_rows_many(connection, statements)


_LOOKUPS = (
    "SELECT set_config('enable_seqscan', 'off', true), "
    "set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
)


_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
    'FROM unnest(CAST(%(keys)s AS text[])) AS k ORDER BY k COLLATE "C"'
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


# Plates repeat (a car enters, leaves, comes back): their look-alike key is cached.
_key_of = lru_cache(maxsize=1 << 16)(lookalike_key)


class _Relock(Exception):
    """Plates to lock that sort before plates already held: redo the transaction with
    them locked up front (locks are taken in sorted order, never a cycle)."""

    def __init__(self, plates: set[str]) -> None:
        super().__init__(f"{len(plates)} plates to lock first")
        self.plates = plates


class _Collision(Exception):
    """Another transaction stored one of the batch's read ids meanwhile: redo the batch."""


_IN_CHUNK = 500  # ids per IN (...) list


def _chunks(items: list[str], size: int = _IN_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_Content = tuple[str, str, str, str, float, datetime]


def _content_of(read: Read) -> _Content:
    return (read.lot_id, read.camera_id, read.direction, read.raw_plate, read.confidence, read.ts)


def _known_reads(
    conn: Connection, read_ids: set[str], postgres: bool
) -> dict[str, tuple[_Content, datetime]]:
    """The stored content and arrival of the reads among ``read_ids`` already recorded."""
    known: dict[str, tuple[_Content, datetime]] = {}
    for chunk in _chunks(sorted(read_ids)):
        for r in _rows(conn, _known_reads_query(postgres), {"ids": chunk}):
            content = (r.lot_id, r.camera_id, r.direction, r.raw_plate, r.confidence, r.ts)
            known[r.read_id] = (content, r.received_at)
    return known


# The statements of the hot path are built once (their SQLAlchemy cache keys are then
# memoized too): building and keying a construct costs more than running it.


def _ids(postgres: bool, name: str = "ids") -> Any:
    """The right side of ``column IN ...`` for a list parameter ``name``. On PostgreSQL
    ``(SELECT unnest(array))``: one parameter whatever the count (planned for each
    execution, see ``_driver_rows``), and a semi-join the planner drives from the array
    through the index. On SQLite an expanding list."""
    if postgres:
        return sa_select(func.unnest(bindparam(name, type_=postgresql.ARRAY(String))))
    return bindparam(name, expanding=True)


@cache
def _known_reads_query(postgres: bool) -> Any:
    c = _table("read").c
    columns = (c.read_id, c.lot_id, c.camera_id, c.direction, c.raw_plate, c.confidence)
    return sa_select(*columns, c.ts, c.received_at).where(c.read_id.in_(_ids(postgres)))


@cache
def _passages_query(postgres: bool) -> Any:
    table = _table("passage")
    return sa_select(table).where(table.c.passage_id.in_(_ids(postgres)))


def _per_key(name: str, inner: Any, key: Any) -> Any:
    """PostgreSQL: ``inner`` (a select) run once per element of the array parameter
    ``name``, with ``key == element``: a nested loop over the array that reaches the rows
    through the index on ``key`` whatever the planner thinks of the table (``OFFSET 0``
    keeps the subquery from being flattened into a join). A semi-join of the array with a
    table of a few thousand rows is planned as a scan of the whole table, which grows with
    the ledger until its statistics catch up; this costs the same at any size."""
    keys = func.unnest(bindparam(name, type_=postgresql.ARRAY(String)))
    k = keys.table_valued("key").render_derived().alias("k")
    lateral = inner.where(key == k.c.key).offset(literal_column("0")).lateral("x")
    return sa_select(*lateral.c).select_from(k).join(lateral, true())


class _Compiled(NamedTuple):
    sql: str
    row: Any  # a named tuple class of the statement's columns
    instants: tuple[int, ...]  # the UTCDateTime columns


@cache
def _compiled(stmt: Any, dialect: Dialect) -> _Compiled:
    compiled = stmt.compile(dialect=dialect)
    columns = list(stmt.selected_columns)
    names = [c.key for c in columns]
    instants = tuple(i for i, c in enumerate(columns) if isinstance(c.type, UTCDateTime))
    return _Compiled(str(compiled), namedtuple("Row", names), instants)


def _driver_rows(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """PostgreSQL: ``sql`` run straight on the driver's connection (psycopg), in the
    transaction ``conn`` has open. SQLAlchemy's machinery costs more per statement than
    PostgreSQL does to run the hot path's small ones. Driver errors are raised as
    SQLAlchemy's (a lost connection invalidated), like ``conn.execute`` does.

    Never a server-side prepared statement (here, and through SQLAlchemy: ``make_engine``
    turns psycopg's automatic preparing off): each execution is planned for its own
    parameters (an unnamed statement). A prepared statement's cached generic plan, made
    once while the tables were small and their statistics stale (tables that only grow;
    autovacuum may be off or late), keeps scanning them whole as they grow; planned each
    time, a statement sees the real size of its key arrays and the transaction's lookup
    settings (``_LOOKUPS``). The foreign-key checks PostgreSQL runs for the writes keep
    their cached plans (a unique-index probe each): forcing custom plans on the whole
    connection (``plan_cache_mode``), as this did before, re-planned every one of them,
    about a tenth of the server's CPU per read."""
    return _driver_rows_many(conn, [(sql, params)])[0]


def _driver_rows_many(
    conn: Connection, statements: Sequence[tuple[str, Mapping[str, Any]]]
) -> list[list[tuple[Any, ...]]]:
    """``_driver_rows`` of several statements that do not depend on each other's results,
    sent together (psycopg's pipeline mode: one round trip for all, run in order)."""
    driver = conn.connection.driver_connection
    assert driver is not None
    sql, params = statements[0]
    try:
        if len(statements) == 1:
            cursors = [driver.execute(sql, params, prepare=False)]
        else:
            with driver.pipeline():
                cursors = []
                for sql, params in statements:
                    cursors.append(driver.cursor())
                    cursors[-1].execute(sql, params, prepare=False)
        return [c.fetchall() if c.description is not None else [] for c in cursors]
    except Exception as exc:
        dbapi = conn.dialect.loaded_dbapi
        if not isinstance(exc, dbapi.Error):
            raise
        lost = conn.dialect.is_disconnect(exc, driver, None)
        if lost:
            # As SQLAlchemy does: this connection, and the pool's others (a server restart
            # killed them all; the retries must not meet them one by one).
            conn.invalidate(exc)
            conn.engine.dispose(close=False)
        raise DBAPIError.instance(
            sql, params, exc, dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc


def _rows(conn: Connection, stmt: Any, params: Mapping[str, Any]) -> list[Any]:
    """The rows of a hot-path select (attributes by column name, instants aware in UTC as
    ``UTCDateTime`` gives them): on PostgreSQL through ``_driver_rows``, on SQLite (the
    database in this process) through SQLAlchemy."""
    rows: list[Any] = _rows_many(conn, [(stmt, params)])[0]
    return rows


def _rows_many(conn: Connection, selects: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[Any]:
    """``_rows`` of several independent selects (on PostgreSQL in one round trip)."""
    if conn.dialect.name != "postgresql":
        return [list(conn.execute(stmt, params)) for stmt, params in selects]
    compiled = [_compiled(stmt, conn.dialect) for stmt, _ in selects]
    sent = [(c.sql, p) for c, (_, p) in zip(compiled, selects, strict=True)]
    results = _driver_rows_many(conn, sent)
    return [_named(c, rows) for c, rows in zip(compiled, results, strict=True)]


def _named(c: _Compiled, rows: list[tuple[Any, ...]]) -> list[Any]:
    if not c.instants:
        return [c.row._make(r) for r in rows]
    out = []
    for r in rows:
        values = list(r)
        for i in c.instants:
            if values[i] is not None:
                values[i] = values[i].astimezone(UTC)
        out.append(c.row._make(values))
    return out


@cache
def _bindings_query(postgres: bool) -> Any:
    binding = _table("binding")
    columns = sa_select(binding.c.plate, binding.c.account)
    if postgres:
        return _per_key("ids", columns, binding.c.plate)
    return columns.where(binding.c.plate.in_(_ids(postgres)))


@cache
def _pg_array_types(table: Table) -> dict[str, str]:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return {c.name: f"{c.type.compile(dialect=dialect)}[]" for c in table.columns}


class _Writes:
    """The writes of one batch, given parents before children.

    SQLite: each runs at once (an executemany; the database is in this process).
    PostgreSQL: they are gathered into ONE statement of data-modifying ``WITH`` clauses
    (``INSERT ... SELECT * FROM unnest(arrays)``, ``UPDATE ... FROM unnest(arrays)``, binary
    parameters) sent by ``flush``: one round trip for all of a batch's writes. Foreign keys
    are checked at the end of that statement; the clauses touch disjoint rows.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"
        self.parts: list[str] = []
        self.params: dict[str, Any] = {}
        self.counted: int | None = None  # the part whose inserted rows are counted
        self.count = 0

    def insert(
        self,
        table: Table,
        rows: list[dict[str, Any]],
        *,
        ignore: str | None = None,
        count: bool = False,
    ) -> None:
        """Insert ``rows`` (dicts with the same keys); with ``ignore``, rows whose
        ``ignore`` column collides are skipped; with ``count``, ``flush`` counts the rows
        actually inserted."""
        if not rows:
            return
        names = list(rows[0])
        if not self.postgres:
            stmt: Any = insert(table) if ignore is None else _sqlite_ignore(table, ignore)
            if count:
                done = self.conn.execute(stmt.returning(table.c[names[0]]), rows).all()
                self.count += len(done)
            else:
                self.conn.execute(stmt, rows)
            return
        arrays = self._arrays(table, names, rows)
        sql = f'INSERT INTO "{table.name}" ({", ".join(names)}) SELECT * FROM unnest({arrays})'
        if ignore is not None:
            sql += f" ON CONFLICT ({ignore}) DO NOTHING"
        if count:
            assert self.counted is None, "one counted insert per flush"
            sql += " RETURNING 1"
            self.counted = len(self.parts)
        self.parts.append(sql)

    def update(self, table: Table, key: str, rows: list[dict[str, Any]]) -> None:
        """``UPDATE table SET ... WHERE key = row[key]`` for every row."""
        if not rows:
            return
        names = [n for n in rows[0] if n != key]
        if not self.postgres:
            stmt = (
                update(table)
                .where(table.c[key] == bindparam(f"b_{key}"))
                .values({n: bindparam(f"b_{n}") for n in names})
            )
            self.conn.execute(stmt, [{f"b_{k}": v for k, v in r.items()} for r in rows])
            return
        cols = [key, *names]
        arrays = self._arrays(table, cols, rows)
        sets = ", ".join(f"{n} = v.{n}" for n in names)
        self.parts.append(
            f'UPDATE "{table.name}" AS t SET {sets} FROM unnest({arrays}) '
            f"AS v({', '.join(cols)}) WHERE t.{key} = v.{key}"
        )

    def delete(self, table: Table, key: str, ids: list[str]) -> None:
        if not ids:
            return
        if not self.postgres:
            self.conn.execute(delete(table).where(table.c[key].in_(ids)))
            return
        arrays = self._arrays(table, [key], [{key: i} for i in ids])
        self.parts.append(f'DELETE FROM "{table.name}" WHERE {key} = ANY({arrays})')

    def flush(self) -> int:
        """Send what is gathered (PostgreSQL); returns the rows the counted insert added."""
        if self.parts:
            ctes = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(self.parts))
            tail = "SELECT 0" if self.counted is None else f"SELECT count(*) FROM w{self.counted}"
            # psycopg directly, parameters in binary: dumping arrays as text costs 4x more.
            ((added,),) = _driver_rows(self.conn, f"WITH {ctes} {tail}", self.params)
            self.count += int(added)
            self.parts, self.params, self.counted = [], {}, None
        return self.count

    def _arrays(self, table: Table, names: list[str], rows: list[dict[str, Any]]) -> str:
        part = len(self.parts)
        types = _pg_array_types(table)
        casts = []
        for j, name in enumerate(names):
            key = f"w{part}c{j}"
            values = [r[name] for r in rows]
            if name in _instant_columns(table):
                for value in values:  # what UTCDateTime checks on the SQLAlchemy path
                    if value is not None:
                        require_aware(f"{table.name}.{name}", value)
            self.params[key] = values
            casts.append(f"CAST(%({key})b AS {types[name]})")
        return ", ".join(casts)


@cache
def _instant_columns(table: Table) -> frozenset[str]:
    return frozenset(c.name for c in table.columns if isinstance(c.type, UTCDateTime))


def _sqlite_ignore(table: Table, key: str) -> Insert:
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])


def _read_values(read: Read, received_at: datetime, payload: bytes) -> dict[str, Any]:
    return {
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


def _dead_values(
    topic: str, lot: str, payload: bytes, rejection: Rejection, received_at: datetime
) -> dict[str, Any]:
    # The same bad message replayed is kept once (UNIQUE digest).
    return {
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


def _passage_values(p: Passage) -> dict[str, Any]:
    return {
        "passage_id": p.passage_id,
        "lot_id": p.lot_id,
        "direction": p.direction.value,
        "plate": p.plate,
        "plate_key": _key_of(p.plate),
        "first_ts": p.first_ts,
        "last_ts": p.last_ts,
    }


def _session_values(s: Session, money: Settlement | None, row: Any) -> dict[str, Any]:
    """The ``session`` row of ``s``; without a settlement, the money columns of ``row``."""
    if s.status is SessionStatus.CLOSED:
        raise ValueError(f"session {s.session_id} must be settled before it is stored")
    values: dict[str, Any] = {
        "session_id": s.session_id,
        "lot_id": s.lot_id,
        "plate": s.plate,
        "plate_key": _key_of(s.plate),
        "status": s.status.value,
        "received_at": s.received_at,
        "entry_passage_id": s.entry_passage_id,
        "entry_at": s.entry_at,
        "exit_passage_id": s.exit_passage_id,
        "exit_at": s.exit_at,
        "exit_plate": s.exit_plate,
        "matched_by": None if s.matched_by is None else s.matched_by.value,
        "review_reason": None if s.review_reason is None else s.review_reason.value,
        "related": json.dumps(list(s.related), ensure_ascii=False),
    }
    if money is not None:
        values.update(fee_cents=money.fee_cents, account=money.account, charged=money.charged)
    elif row is not None:
        values.update(fee_cents=row.fee_cents, account=row.account, charged=row.charged)
    else:
        values.update(fee_cents=None, account=None, charged=False)
    return values


@dataclass
class _Loaded:
    """Rows of the state a decision needs (a batch of reads, or an expiry), loaded in its
    transaction, and the reads (evidence) of those passages where they were loaded."""

    sessions: dict[str, Any]
    pending: dict[str, Any]
    passages: dict[str, Any]
    evidence: dict[str, list[Read]]  # passage id -> its reads

    def book(self, grace: timedelta, window: timedelta) -> SessionBook:
        return SessionBook(
            grace=grace,
            window=window,
            sessions=[_session_of(r) for r in self.sessions.values()],
            pending=[_pending_of(r) for r in self.pending.values()],
            passages=[
                _passage_with(r, self.evidence.get(r.passage_id, ()))
                for r in sorted(self.passages.values(), key=lambda r: r.id)
            ],
        )

    def read_ids(self) -> set[str]:
        """The ids of the stored reads loaded as evidence."""
        return {r.read_id for reads in self.evidence.values() for r in reads}

    def plates(self) -> set[str]:
        """Every plate the loaded state was read as (sessions, passages, their reads)."""
        out = {r.plate for r in self.sessions.values()}
        out |= {r.exit_plate for r in self.sessions.values() if r.exit_plate is not None}
        out |= {r.plate for r in self.passages.values()}
        out |= {read.plate for reads in self.evidence.values() for read in reads}
        return out


def _passage_with(row: Any, reads: Iterable[Read]) -> Passage:
    """The passage of ``row`` rebuilt from its reads (plate voted, times) when they are all
    there, else the stored summary."""
    found = list(reads)
    return passage_of(row.passage_id, found) if found else _passage_of(row)


@cache
def _matching(table_name: str, names: tuple[str, ...], near: bool = False) -> Any:
    """PostgreSQL: ``table`` joined to ``unnest(:k_<name> arrays) AS k(names)`` on every
    name: the rows whose (names) is one of given tuples, found through the index on those
    columns whatever the table's statistics (a cross product of ``= ANY`` lists is not:
    with stale statistics the planner scans the table, and the scans grow with the
    ledger). ``near``: passages whose span meets ``[:low, :high]``."""
    table = _table(table_name)
    arrays = [bindparam(f"k_{name}", type_=postgresql.ARRAY(String)) for name in names]
    keys = func.unnest(*arrays).table_valued(*names).render_derived().alias("k")
    on = and_(*(table.c[name] == keys.c[name] for name in names))
    query = sa_select(table).join_from(table, keys, on)
    return query.where(_near(table)) if near else query


def _near(table: Table) -> Any:
    low, high = bindparam("low", type_=UTCDateTime), bindparam("high", type_=UTCDateTime)
    return and_(table.c.first_ts <= high, table.c.last_ts >= low)


def _tuples(names: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> dict[str, list[str]]:
    return {f"k_{name}": [r[i] for r in rows] for i, name in enumerate(names)}


@cache
def _by_lot_and_key(table_name: str, direction: bool = False) -> Any:
    """SQLite: rows of ``:lots`` x ``:keys`` (x ``:dirs``, passages near ``[low, high]``)."""
    table = _table(table_name)
    query = sa_select(table).where(
        table.c.lot_id.in_(bindparam("lots", expanding=True)),
        table.c.plate_key.in_(bindparam("keys", expanding=True)),
    )
    if direction:
        query = query.where(table.c.direction.in_(bindparam("dirs", expanding=True)))
        query = query.where(_near(table))
    return query


def _keyed_sessions(postgres: bool) -> Any:
    """The sessions of the batch's (lot, look-alike key) pairs (PostgreSQL: ``:keys``;
    SQLite: ``:lots`` x ``:keys``, filtered to the pairs afterwards)."""
    if postgres:
        return _matching("session", ("lot_id", "plate_key"))
    return _by_lot_and_key("session")


@cache
def _recent_sessions(postgres: bool) -> Any:
    """Of those: the open ones, those that entered or left at or after ``:since``, and of
    those that entered before ``:since``, per lot and plate the latest to enter (by entry
    time, then id), once by the plate it was entered under and once by the plate its exit
    was read as. One statement (the server ranks the key's sessions; only these come
    back)."""
    table = _table("session")
    c = table.c
    since = bindparam("since", type_=UTCDateTime)
    before = c.entry_at < since
    latest = (c.entry_at.desc(), c.session_id.desc())
    by_plate = func.row_number().over(partition_by=(c.lot_id, c.plate, before), order_by=latest)
    by_exit = func.row_number().over(partition_by=(c.lot_id, c.exit_plate, before), order_by=latest)
    inner = (
        _keyed_sessions(postgres)
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
    return sa_select(*(k[col.name] for col in table.columns)).where(recent)


@cache
def _holders_query(postgres: bool) -> Any:
    """The sessions that hold any of the passages ``:ids`` (as entry or exit)."""
    c = _table("session").c
    held = or_(
        c.entry_passage_id.in_(_ids(postgres, "ids")), c.exit_passage_id.in_(_ids(postgres, "xids"))
    )
    return sa_select(_table("session")).where(held)


@cache
def _evidence_query(postgres: bool) -> Any:
    link, read = _table("passage_read"), _table("read")
    c = read.c
    columns = (link.c.passage_id, c.read_id, c.lot_id, c.camera_id, c.direction, c.raw_plate)
    if postgres:
        inner = sa_select(*columns, c.confidence, c.ts).join_from(
            link, read, link.c.read_id == c.read_id
        )
        return _per_key("pids", inner, link.c.passage_id)
    return (
        sa_select(*columns, c.confidence, c.ts)
        .join_from(link, read, link.c.read_id == c.read_id)
        .where(link.c.passage_id.in_(bindparam("pids", expanding=True)))
    )


def _load_state(conn: Connection, reads: list[Read], window: timedelta, postgres: bool) -> _Loaded:
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
    these gives the same decisions as the whole history."""
    pairs = {(r.lot_id, _key_of(r.plate)) for r in reads}
    gates = {(r.lot_id, r.direction.value, _key_of(r.plate)) for r in reads}
    low = min(r.ts for r in reads) - window
    high = max(r.ts for r in reads) + window
    since = low - window
    sessions: dict[str, Any] = {}
    pending: dict[str, Any] = {}
    passages: dict[str, Any] = {}
    span = {"low": low, "high": high}
    if postgres:
        names = ("lot_id", "plate_key")
        by_key = _tuples(names, sorted(pairs))
        gate_names = ("lot_id", "direction", "plate_key")
        params: dict[str, Any] = {**_tuples(gate_names, sorted(gates)), **span}

        def keyed(since: datetime) -> tuple[Any, Mapping[str, Any]]:
            return _recent_sessions(True), {**by_key, "since": since}

        found = _rows_many(
            conn,
            [
                keyed(since),
                (_matching("pending_exit", names), by_key),
                (_matching("passage", gate_names, near=True), params),
            ],
        )
        sessions = {row.session_id: row for row in found[0]}
        pending = {row.passage_id: row for row in found[1]}
        passages = {row.passage_id: row for row in found[2]}
        oldest = min((row.at for row in pending.values()), default=since)
        if oldest < since:  # a pending exit waits from before: its decisions look back
            since = oldest - 2 * window
            sessions.update((row.session_id, row) for row in _rows(conn, *keyed(since)))
    else:
        lots = sorted({lot for lot, _ in pairs})
        keys = sorted({key for _, key in pairs})
        directions = sorted({d for _, d, _ in gates})

        def keyed_rows(query: Any, params: Mapping[str, Any]) -> Iterator[Any]:
            for row in conn.execute(query, params):
                if (row.lot_id, row.plate_key) in pairs:
                    yield row

        for chunk in _chunks(keys):
            params = {"lots": lots, "keys": chunk}
            pending.update(
                (r.passage_id, r) for r in keyed_rows(_by_lot_and_key("pending_exit"), params)
            )
            near = {**params, "dirs": directions, **span}
            for row in conn.execute(_by_lot_and_key("passage", direction=True), near):
                if (row.lot_id, row.direction, row.plate_key) in gates:
                    passages[row.passage_id] = row
        since = min([since, *(row.at - 2 * window for row in pending.values())])
        for chunk in _chunks(keys):
            timed = {"lots": lots, "keys": chunk, "since": since}
            recent = keyed_rows(_recent_sessions(False), timed)
            sessions.update((r.session_id, r) for r in recent)
    # The sessions holding a loaded passage (a passage can outlast ``since`` when its reads
    # keep coming, and so can the stay it belongs to).
    held = {pid for r in sessions.values() for pid in (r.entry_passage_id, r.exit_passage_id)}
    loose = sorted(pid for pid in passages if pid not in held)
    for chunk in _chunks(loose):
        for row in _rows(conn, _holders_query(postgres), {"ids": chunk, "xids": chunk}):
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
    for chunk in _chunks(missing):
        for row in _rows(conn, _passages_query(postgres), {"ids": chunk}):
            passages[row.passage_id] = row
    return _Loaded(sessions, pending, passages, _evidence(conn, sorted(passages), postgres))


def _evidence(conn: Connection, passage_ids: list[str], postgres: bool) -> dict[str, list[Read]]:
    """The reads of each passage (``passage_read`` -> ``read``)."""
    out: dict[str, list[Read]] = {}
    query = _evidence_query(postgres)
    for chunk in _chunks(passage_ids, 10 * _IN_CHUNK if postgres else _IN_CHUNK):
        for r in _rows(conn, query, {"pids": chunk}):
            out.setdefault(r.passage_id, []).append(
                Read(
                    read_id=r.read_id,
                    lot_id=r.lot_id,
                    camera_id=r.camera_id,
                    direction=Direction(r.direction),
                    raw_plate=r.raw_plate,
                    confidence=r.confidence,
                    ts=r.ts,
                )
            )
    return out


def _order_key(s: Session) -> tuple[datetime, str]:
    """Sessions in the order ``SessionBook.sessions`` lists them (first passage, id)."""
    first = s.entry_at if s.entry_at is not None else s.exit_at
    assert first is not None
    return (first, s.session_id)


# ---- row <-> domain ------------------------------------------------------------------------


def _session_of(row: SessionRow | Any) -> Session:
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


def _pending_of(row: PendingExitRow | Any) -> PendingExit:
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
        "plate_key": _key_of(p.plate),
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


def _passage_of(row: PassageRow | Any) -> Passage:
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
        # Batches left to check for known read ids before writing (see _record_batch).
        self._check_known = 0

    @property
    def parallel_writers(self) -> bool:
        """Whether transactions on different lots gain from running side by side
        (PostgreSQL: they lock different lots; SQLite has one writer at a time)."""
        return self._postgres

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
        return self._retrying(lambda: self._record_batch_once(prepared))

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
        if text_fault(key) is not None:
            raise LedgerError(f"not a plate: {plate!r}")
        name = account.strip()
        if text_fault(name) is not None:
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

    def _lock(self, db: DbSession, *keys: str) -> None:
        if self._postgres:
            _advisory_lock(db.connection(), keys)

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
            values = _dead_values(p.topic, lot, p.payload, rejection, p.received_at)
            dead.setdefault(values["digest"], values)
            outcomes.append(
                RecordOutcome(
                    OutcomeKind.DEAD_LETTER, rejection.read_id, rejection.reason, rejection.detail
                )
            )

        with self.engine.begin() as conn:
            valid = [p.msg for p in batch if p.msg is not None]
            # The reads' lots and plates, in one statement (sorted: lots before plates).
            plates = {m.plate for m in valid} | set(extra)
            keys = [*(f"lot:{m.lot_id}" for m in valid), *(f"plate:{p}" for p in plates)]
            if self._postgres:
                _advisory_lock(conn, keys, lookups=True)
            known = (
                _known_reads(conn, {m.read_id for m in valid}, self._postgres)
                if check_known
                else {}
            )
            for p in batch:
                msg = p.msg
                if msg is None:
                    assert p.rejection is not None
                    reject(p, p.lot, p.rejection)
                    continue
                content = _content_of(msg)
                old = known.get(msg.read_id)
                if old is None:
                    known[msg.read_id] = (content, p.received_at.astimezone(UTC))
                    fresh.append((len(outcomes), msg, p.received_at, p.payload))
                    outcomes.append(RecordOutcome(OutcomeKind.RECORDED, msg.read_id))
                elif old[0] == content:
                    outcomes.append(RecordOutcome(OutcomeKind.DUPLICATE, msg.read_id))
                else:
                    why = (
                        f"read_id {msg.read_id!r} was recorded at {old[1].isoformat()} "
                        "with different content"
                    )
                    reject(p, msg.lot_id, Rejection(DeadReason.READ_ID_CONFLICT, why, msg.read_id))
            writes = _Writes(conn)
            if fresh:
                changed = self._apply_reads(conn, writes, fresh, plates, check_known)
                for index, sessions in changed.items():
                    outcomes[index] = replace(outcomes[index], sessions=sessions)
            writes.insert(_table("dead_letter"), list(dead.values()), ignore="digest")
            if writes.flush() != len(fresh):
                raise _Collision("a read id was stored concurrently")  # rolled back, redone
        return outcomes

    def _apply_reads(
        self,
        conn: Connection,
        writes: _Writes,
        fresh: list[tuple[int, Read, datetime, bytes]],
        locked: AbstractSet[str],
        check_known: bool,
    ) -> dict[int, tuple[str, ...]]:
        """Store new reads and apply the matching rules to them, in order, on the persisted
        state of their (lot, look-alike key); returns the sessions each read changed."""
        reads = [read for _, read, _, _ in fresh]
        writes.insert(
            _table("read"),
            [_read_values(read, at, payload) for _, read, at, payload in fresh],
            ignore="read_id",
            count=True,
        )
        state = _load_state(conn, reads, self.window, self._postgres)
        if not check_known and not state.read_ids().isdisjoint(r.read_id for r in reads):
            raise _Collision("a read of the batch is stored already")  # redone, checked
        book = state.book(self.grace, self.window)
        # Money: every plate a stay closed by this batch can have been read as is among
        # these (locked with the lots, or after them in order): their accounts read.
        checked = state.plates() | {r.plate for r in reads}
        held = set(locked)
        bindings = self._bound_accounts(conn, checked, held)
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
                        bindings |= self._bound_accounts(conn, unknown, held)
                        checked |= unknown
                    money = settle_stay(
                        book.session(sid), self.tariffs[e.session.lot_id], plates, bindings
                    )
                    book.decide(money.session)
                    settled[sid] = money
            touched |= ids
            changed[index] = tuple(sorted(ids, key=lambda i: _order_key(book.session(i))))
        # Writes, parents before children.
        passages = _table("passage")
        writes.insert(passages, [_passage_values(book.passage(p)) for p in created])
        writes.update(
            passages,
            "passage_id",
            [
                {
                    "passage_id": p,
                    "plate": book.passage(p).plate,  # re-voted
                    "first_ts": book.passage(p).first_ts,
                    "last_ts": book.passage(p).last_ts,
                }
                for p in sorted(grown)
            ],
        )
        writes.insert(_table("passage_read"), links)
        after = {x.passage_id: x for x in book.pending_exits()}
        before = {pid: _pending_of(r) for pid, r in state.pending.items()}
        pending = _table("pending_exit")
        gone = [pid for pid in before if pid not in after]
        writes.delete(pending, "passage_id", gone)
        self._write_sessions(writes, book, state, touched, settled)
        added = [_pending_values(x) for pid, x in after.items() if pid not in before]
        writes.insert(pending, added)
        moved = [
            _pending_values(x) for pid, x in after.items() if pid in before and before[pid] != x
        ]
        writes.update(pending, "passage_id", moved)
        charges = [
            {
                "session_id": sid,
                "account": money.account,
                "cents": money.charge_cents,
                "charged_at": closed_by[sid][1],
            }
            for sid, money in sorted(
                settled.items(),
                key=lambda kv: (closed_by[kv[0]][0], _order_key(kv[1].session)),
            )
            if money.charge_cents is not None and money.account is not None
        ]
        writes.insert(_table("charge"), charges)
        return changed

    def _write_sessions(
        self,
        writes: _Writes,
        book: SessionBook,
        state: _Loaded,
        touched: set[str],
        settled: dict[str, Settlement],
    ) -> None:
        sessions = _table("session")
        new: list[dict[str, Any]] = []
        old: list[dict[str, Any]] = []
        for sid in sorted(touched, key=lambda i: _order_key(book.session(i))):
            money = settled.get(sid)
            s = book.session(sid)  # as decided, then shown as later reads of the batch say
            row = state.sessions.get(sid)
            values = _session_values(s, money, row)
            (new if row is None else old).append(values)
        writes.insert(sessions, new)
        writes.update(sessions, "session_id", old)

    def _bound_accounts(
        self, conn: Connection, plates: set[str], locked: set[str]
    ) -> dict[str, str]:
        """Accounts bound to ``plates``, holding their locks until the end of the transaction
        (``locked``: the plates this transaction holds, updated). A plate to lock that sorts
        before one already held raises ``_Relock``: locks are taken in sorted order only."""
        if not plates:
            return {}
        new = plates - locked
        if self._postgres and new and locked and min(new) < max(locked):
            raise _Relock(new)
        self._lock_keys(conn, (f"plate:{p}" for p in new))
        locked |= new
        rows = _rows(conn, _bindings_query(self._postgres), {"ids": sorted(plates)})
        return {plate: account for plate, account in rows}

    def _lock_keys(self, conn: Connection, keys: Iterable[str]) -> None:
        if self._postgres:
            _advisory_lock(conn, keys)

    def _write_back(
        self, db: DbSession, state: _Loaded, book: SessionBook, lot: str, at: datetime
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
            state = _Loaded(
                sessions={}, pending={r.passage_id: r for r in pending}, passages={}, evidence={}
            )
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

    def _debts_of(self, db: DbSession, plate: str, account: str) -> list[SessionRow]:
        """The unpaid sessions that binding ``plate`` to ``account`` collects (the plate's
        lock is held).

        Those recorded under ``plate``, and those recorded under a look-alike (a misread
        plate) whose stay was also read as ``plate`` and whose accounts
        (``settlement.choose_account`` over every plate the stay was read as, with this
        binding) are exactly ``account``: never a guess between two accounts."""
        key = lookalike_key(plate)
        rows = list(
            db.exec(
                select(SessionRow).where(
                    SessionRow.status == SessionStatus.UNPAID,
                    or_(col(SessionRow.plate) == plate, col(SessionRow.plate_key) == key),
                )
            )
        )
        others = [r for r in rows if r.plate != plate]
        if not others:
            return rows
        conn = db.connection()
        own = sorted(pid for r in others for pid in (r.entry_passage_id, r.exit_passage_id) if pid)
        evidence = _evidence(conn, own, self._postgres)
        passages = [passage_of(pid, reads) for pid, reads in evidence.items()]
        stays = {r.session_id: stay_plates(_session_of(r), passages) for r in others}
        read_as = {sid: plates for sid, plates in stays.items() if plate in plates}
        if not read_as:
            return [r for r in rows if r.plate == plate]
        # Their other plates decide too: locked (one statement, sorted; a deadlock with a
        # recording transaction is retried), then their bindings and the debts read again,
        # after the locks (another binding may have collected one meanwhile).
        plates = {p for ps in read_as.values() for p in ps} - {plate}
        self._lock(db, *(f"plate:{p}" for p in plates))
        bindings = {
            b.plate: b.account
            for b in db.exec(select(Binding).where(col(Binding.plate).in_(sorted(plates))))
        }
        bindings[plate] = account
        ids = [r.session_id for r in rows if r.plate == plate or r.session_id in read_as]
        fresh = db.exec(
            select(SessionRow)
            .where(col(SessionRow.session_id).in_(ids), SessionRow.status == SessionStatus.UNPAID)
            .execution_options(populate_existing=True)
        )
        chosen = []
        for r in fresh:
            if r.plate != plate:
                choice = choose_account(_session_of(r), read_as[r.session_id], bindings)
                if choice.account != account:
                    continue
            chosen.append(r)
        return chosen

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
            unpaid = self._debts_of(db, plate, account)
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
                report = ChargeReport(
                    row.session_id, row.lot_id, row.plate, account, money.fee_cents, at
                )
                charged.append(report)
            db.flush()
            return BindOutcome(plate, account, previous, tuple(charged))
