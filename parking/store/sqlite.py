"""The SQLite adapter of the store port: a ledger in one file, in this process.

WAL, a busy timeout, foreign keys, synchronous=FULL; every transaction starts with
``BEGIN IMMEDIATE`` (one writer at a time, the others wait up to the busy timeout), so no
keys are locked. Writes run as they come (an executemany each: the database is in this
process); hot-path selects go through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    update,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import sqlite

from citybrain.parking.passages import Read
from citybrain.parking.store import common
from citybrain.parking.store.common import SqlStore, SqlTransaction, chunks, near, table
from citybrain.parking.store.port import LedgerError, Write

SQLITE_BUSY_MS = 30_000


def make_engine(url: URL) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        raise LedgerError("the ledger needs a SQLite file: sqlite:///path/to/ledger.db")
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000}
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


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


def migration_lock(connection: Connection) -> None:
    """Nothing: a migration's transaction starts with BEGIN IMMEDIATE like every other."""


class SqliteSql:
    """List parameters are expanding ``IN (...)`` lists."""

    @staticmethod
    def ids(name: str) -> Any:
        return bindparam(name, expanding=True)

    @staticmethod
    def per_key(name: str, inner: Any, key: Any) -> Any:
        return inner.where(key.in_(bindparam(name, expanding=True)))

    @staticmethod
    def keyed(table_name: str) -> Any:
        return _by_lot_and_key(table_name)


@cache
def _by_lot_and_key(table_name: str, direction: bool = False) -> Any:
    """Rows of ``:lots`` x ``:keys`` (x ``:dirs``, passages near ``[low, high]``)."""
    t = table(table_name)
    query = sa_select(t).where(
        t.c.lot_id.in_(bindparam("lots", expanding=True)),
        t.c.plate_key.in_(bindparam("keys", expanding=True)),
    )
    if direction:
        query = query.where(t.c.direction.in_(bindparam("dirs", expanding=True)))
        query = query.where(near(t))
    return query


@cache
def _ignoring(table_name: str, key: str) -> Any:
    return sqlite.insert(table(table_name)).on_conflict_do_nothing(index_elements=[key])


class SqliteTransaction(SqlTransaction):
    sql = SqliteSql

    def rows_many(self, selects: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[list[Any]]:
        return [list(self.conn.execute(stmt, params)) for stmt, params in selects]

    def lock_batch(self, keys: Iterable[str]) -> None:
        pass  # one writer at a time

    def lock(self, keys: Iterable[str]) -> None:
        pass

    def keyed_state(
        self, reads: Sequence[Read], window: timedelta
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``:lots`` x ``:keys`` in chunks of keys, filtered to the batch's pairs."""
        pairs = common.pairs_of(reads)
        gates = common.gates_of(reads)
        low, high, since = common.since_of(reads, window)
        sessions: dict[str, Any] = {}
        pending: dict[str, Any] = {}
        passages: dict[str, Any] = {}
        span = {"low": low, "high": high}
        lots = sorted({lot for lot, _ in pairs})
        keys = sorted({key for _, key in pairs})
        directions = sorted({d for _, d, _ in gates})

        def keyed_rows(query: Any, params: Mapping[str, Any]) -> Iterator[Any]:
            for row in self.conn.execute(query, params):
                if (row.lot_id, row.plate_key) in pairs:
                    yield row

        for chunk in chunks(keys):
            params = {"lots": lots, "keys": chunk}
            pending.update(
                (r.passage_id, r) for r in keyed_rows(_by_lot_and_key("pending_exit"), params)
            )
            around = {**params, "dirs": directions, **span}
            for row in self.conn.execute(_by_lot_and_key("passage", direction=True), around):
                if (row.lot_id, row.direction, row.plate_key) in gates:
                    passages[row.passage_id] = row
        since = min([since, *(row.at - 2 * window for row in pending.values())])
        for chunk in chunks(keys):
            timed = {"lots": lots, "keys": chunk, "since": since}
            recent = keyed_rows(common._recent_sessions(SqliteSql), timed)
            sessions.update((r.session_id, r) for r in recent)
        return sessions, pending, passages

    def write(self, writes: Sequence[Write]) -> int:
        """Each write at once (an executemany)."""
        count = 0
        for w in writes:
            if not w.rows:
                continue
            t = table(w.table)
            if w.kind == "insert":
                stmt: Any = insert(t) if w.ignore is None else _ignoring(w.table, w.ignore)
                if w.count:
                    first = next(iter(w.rows[0]))
                    count += len(self.conn.execute(stmt.returning(t.c[first]), w.rows).all())
                else:
                    self.conn.execute(stmt, w.rows)
            elif w.kind == "update":
                assert w.key is not None
                names = [n for n in w.rows[0] if n != w.key]
                stmt = (
                    update(t)
                    .where(t.c[w.key] == bindparam(f"b_{w.key}"))
                    .values({n: bindparam(f"b_{n}") for n in names})
                )
                self.conn.execute(stmt, [{f"b_{k}": v for k, v in r.items()} for r in w.rows])
            else:
                assert w.key is not None
                ids = [r[w.key] for r in w.rows]
                self.conn.execute(delete(t).where(t.c[w.key].in_(ids)))
        return count


class SqliteStore(SqlStore):
    transaction_type = SqliteTransaction
    parallel_writers = False  # one writer at a time
