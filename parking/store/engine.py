"""Opening a store: a database URL -> an engine configured by its adapter -> the adapter;
and the packaged Alembic migrations.

``ADAPTERS`` names the adapters by SQLAlchemy backend name: adding a database means
adding a module like ``citybrain.parking.store.sqlite`` and a line here.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from citybrain.parking.store import postgres, sqlite
from citybrain.parking.store.common import SqlStore
from citybrain.parking.store.port import LedgerError, Store

MIGRATIONS = "citybrain.parking:migrations"  # Alembic script location (package resource)


class Adapter:
    """A database's adapter: its engine, its store, its lock around migrations."""

    def __init__(
        self,
        module: ModuleType,
        store: type[SqlStore],
    ) -> None:
        self.make_engine: Callable[..., Engine] = module.make_engine
        self.migration_lock: Callable[[Connection], None] = module.migration_lock
        self.store = store


ADAPTERS: dict[str, Adapter] = {
    "sqlite": Adapter(sqlite, sqlite.SqliteStore),
    "postgresql": Adapter(postgres, postgres.PostgresStore),
}


def make_engine(url: str) -> Engine:
    """An engine for a SQLite file or a PostgreSQL database, configured for the ledger."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise LedgerError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    adapter = ADAPTERS.get(backend)
    if adapter is None:
        raise LedgerError(
            f"unsupported database {backend!r}: use sqlite:///FILE or postgresql://..."
        )
    return adapter.make_engine(parsed)


def store_for(engine: Engine) -> Store:
    """The store of ``engine``'s database."""
    store: Store = ADAPTERS[engine.dialect.name].store(engine)
    return store


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the packaged Alembic migrations up to ``revision`` (idempotent, concurrent-safe)."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.begin() as connection:
        ADAPTERS[connection.dialect.name].migration_lock(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
