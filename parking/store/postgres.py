"""The PostgreSQL adapter of the store port (psycopg 3).

Transactions run side by side: each holds transaction-scoped advisory locks on the keys it
decides (``lock``: one statement, sorted). The hot path's statements run straight on
psycopg (``_driver_rows_many``: several in one round trip, psycopg's pipeline mode, never a
server-side prepared statement); a batch's writes go out as ONE statement of
data-modifying ``WITH`` clauses over ``unnest`` arrays with binary parameters (``write``).
Keys given in arrays are matched through the indexes whatever the table statistics say
(``_per_key``, ``_matching``, ``_LOOKUPS``).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    String,
    Table,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    literal_column,
    true,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from citybrain.parking.passages import Read
from citybrain.parking.store import common
from citybrain.parking.store.common import SqlStore, SqlTransaction, near, table
from citybrain.parking.store.port import Write
from citybrain.parking.tables import UTCDateTime
from citybrain.parking.times import require_aware


def make_engine(url: URL) -> Engine:
    # psycopg never prepares a statement on the server (its default prepares one that
    # ran 5 times): each execution is planned for its own parameters; see _driver_rows.
    engine = create_engine(url, connect_args={"prepare_threshold": None})
    event.listen(engine, "connect", _postgresql_connect)
    return engine


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


def migration_lock(connection: Connection) -> None:
    """Concurrent upgrades wait for each other."""
    _advisory_lock(connection, ("citybrain.parking:migrate",))


# ---- locks ------------------------------------------------------------------------------------


def _advisory_lock(connection: Connection, keys: Iterable[str], *, lookups: bool = False) -> None:
    """Transaction-scoped locks, all in one statement, taken in sorted order (code point
    order, as Python sorts): no lock cycles between transactions.

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


# ---- the driver ---------------------------------------------------------------------------


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
    """``sql`` run straight on the driver's connection (psycopg), in the transaction
    ``conn`` has open. SQLAlchemy's machinery costs more per statement than PostgreSQL
    does to run the hot path's small ones. Driver errors are raised as SQLAlchemy's (a
    lost connection invalidated), like ``conn.execute`` does.

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


# ---- keys in arrays -------------------------------------------------------------------------


def _array(name: str) -> Any:
    return bindparam(name, type_=postgresql.ARRAY(String))


def _per_key(name: str, inner: Any, key: Any) -> Any:
    """``inner`` (a select) run once per element of the array parameter ``name``, with
    ``key == element``: a nested loop over the array that reaches the rows through the
    index on ``key`` whatever the planner thinks of the table (``OFFSET 0`` keeps the
    subquery from being flattened into a join). A semi-join of the array with a table of
    a few thousand rows is planned as a scan of the whole table, which grows with the
    ledger until its statistics catch up; this costs the same at any size."""
    keys = func.unnest(_array(name))
    k = keys.table_valued("key").render_derived().alias("k")
    lateral = inner.where(key == k.c.key).offset(literal_column("0")).lateral("x")
    return sa_select(*lateral.c).select_from(k).join(lateral, true())


@cache
def _matching(table_name: str, names: tuple[str, ...], around: bool = False) -> Any:
    """``table`` joined to ``unnest(:k_<name> arrays) AS k(names)`` on every name: the rows
    whose (names) is one of given tuples, found through the index on those columns whatever
    the table's statistics (a cross product of ``= ANY`` lists is not: with stale
    statistics the planner scans the table, and the scans grow with the ledger).
    ``around``: passages whose span meets ``[:low, :high]``."""
    t = table(table_name)
    arrays = [_array(f"k_{name}") for name in names]
    keys = func.unnest(*arrays).table_valued(*names).render_derived().alias("k")
    on = and_(*(t.c[name] == keys.c[name] for name in names))
    query = sa_select(t).join_from(t, keys, on)
    return query.where(near(t)) if around else query


def _tuples(names: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> dict[str, list[str]]:
    return {f"k_{name}": [r[i] for r in rows] for i, name in enumerate(names)}


_PAIR = ("lot_id", "plate_key")
_GATE = ("lot_id", "direction", "plate_key")


class PostgresSql:
    """List parameters are arrays: ``(SELECT unnest(array))`` in an ``IN`` (one parameter
    whatever the count, planned for each execution, a semi-join the planner drives from the
    array through the index), or a lateral lookup per key (``_per_key``)."""

    @staticmethod
    def ids(name: str) -> Any:
        return sa_select(func.unnest(_array(name)))

    @staticmethod
    def per_key(name: str, inner: Any, key: Any) -> Any:
        return _per_key(name, inner, key)

    @staticmethod
    def keyed(table_name: str) -> Any:
        return _matching(table_name, _PAIR)


# ---- writes ---------------------------------------------------------------------------------


@cache
def _pg_array_types(t: Table) -> dict[str, str]:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return {c.name: f"{c.type.compile(dialect=dialect)}[]" for c in t.columns}


@cache
def _instant_columns(t: Table) -> frozenset[str]:
    return frozenset(c.name for c in t.columns if isinstance(c.type, UTCDateTime))


class _Statement:
    """The writes of one batch as ONE statement of data-modifying ``WITH`` clauses
    (``INSERT ... SELECT * FROM unnest(arrays)``, ``UPDATE ... FROM unnest(arrays)``,
    ``DELETE ... = ANY(array)``, binary parameters). Foreign keys are checked at the end of
    the statement; the clauses touch disjoint rows."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: dict[str, Any] = {}
        self.counted: int | None = None  # the part whose inserted rows are counted

    def add(self, w: Write) -> None:
        t = table(w.table)
        if w.kind == "insert":
            names = list(w.rows[0])
            arrays = self._arrays(t, names, w.rows)
            sql = f'INSERT INTO "{t.name}" ({", ".join(names)}) SELECT * FROM unnest({arrays})'
            if w.ignore is not None:
                sql += f" ON CONFLICT ({w.ignore}) DO NOTHING"
            if w.count:
                assert self.counted is None, "one counted insert per write"
                sql += " RETURNING 1"
                self.counted = len(self.parts)
            self.parts.append(sql)
            return
        key = w.key
        assert key is not None
        if w.kind == "update":
            names = [n for n in w.rows[0] if n != key]
            cols = [key, *names]
            arrays = self._arrays(t, cols, w.rows)
            sets = ", ".join(f"{n} = v.{n}" for n in names)
            self.parts.append(
                f'UPDATE "{t.name}" AS t SET {sets} FROM unnest({arrays}) '
                f"AS v({', '.join(cols)}) WHERE t.{key} = v.{key}"
            )
        else:
            arrays = self._arrays(t, [key], w.rows)
            self.parts.append(f'DELETE FROM "{t.name}" WHERE {key} = ANY({arrays})')

    def sql(self) -> str:
        ctes = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(self.parts))
        tail = "SELECT 0" if self.counted is None else f"SELECT count(*) FROM w{self.counted}"
        return f"WITH {ctes} {tail}"

    def _arrays(self, t: Table, names: list[str], rows: list[dict[str, Any]]) -> str:
        part = len(self.parts)
        types = _pg_array_types(t)
        casts = []
        for j, name in enumerate(names):
            key = f"w{part}c{j}"
            values = [r[name] for r in rows]
            if name in _instant_columns(t):
                for value in values:  # what UTCDateTime checks on the SQLAlchemy path
                    if value is not None:
                        require_aware(f"{t.name}.{name}", value)
            self.params[key] = values
            casts.append(f"CAST(%({key})b AS {types[name]})")
        return ", ".join(casts)


# ---- the adapter ----------------------------------------------------------------------------


class PostgresTransaction(SqlTransaction):
    sql = PostgresSql
    evidence_chunk = 10 * common.IN_CHUNK

    def rows_many(self, selects: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[list[Any]]:
        """Through ``_driver_rows_many``: one round trip for all."""
        compiled = [_compiled(stmt, self.conn.dialect) for stmt, _ in selects]
        sent = [(c.sql, p) for c, (_, p) in zip(compiled, selects, strict=True)]
        results = _driver_rows_many(self.conn, sent)
        return [_named(c, rows) for c, rows in zip(compiled, results, strict=True)]

    def lock_batch(self, keys: Iterable[str]) -> None:
        _advisory_lock(self.conn, keys, lookups=True)

    def lock(self, keys: Iterable[str]) -> None:
        _advisory_lock(self.conn, keys)

    def keyed_state(
        self, reads: Sequence[Read], window: timedelta
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Sessions, pending exits and passages in one round trip; the sessions again from
        further back when a pending exit waits from before."""
        low, high, since = common.since_of(reads, window)
        by_key = _tuples(_PAIR, sorted(common.pairs_of(reads)))
        around: dict[str, Any] = {
            **_tuples(_GATE, sorted(common.gates_of(reads))),
            "low": low,
            "high": high,
        }

        def keyed(since: datetime) -> tuple[Any, Mapping[str, Any]]:
            return common._recent_sessions(PostgresSql), {**by_key, "since": since}

        found = self.rows_many(
            [
                keyed(since),
                (_matching("pending_exit", _PAIR), by_key),
                (_matching("passage", _GATE, around=True), around),
            ]
        )
        sessions = {row.session_id: row for row in found[0]}
        pending = {row.passage_id: row for row in found[1]}
        passages = {row.passage_id: row for row in found[2]}
        oldest = min((row.at for row in pending.values()), default=since)
        if oldest < since:  # a pending exit waits from before: its decisions look back
            since = oldest - 2 * window
            sessions.update((row.session_id, row) for row in self.rows(*keyed(since)))
        return sessions, pending, passages

    def write(self, writes: Sequence[Write]) -> int:
        """All of ``writes`` in one statement, one round trip (psycopg directly, parameters
        in binary: dumping arrays as text costs 4x more)."""
        statement = _Statement()
        for w in writes:
            if w.rows:
                statement.add(w)
        if not statement.parts:
            return 0
        ((added,),) = _driver_rows(self.conn, statement.sql(), statement.params)
        return int(added)


class PostgresStore(SqlStore):
    transaction_type = PostgresTransaction
    parallel_writers = True  # transactions on different lots run side by side
