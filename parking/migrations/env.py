"""Alembic environment of the parking ledger.

Run by ``citybrain.parking.ledger.upgrade(engine)``, which passes its connection in
``config.attributes["connection"]``; or by hand from the repository::

    alembic -c parking/migrations/alembic.ini -x url=sqlite:///ledger.db upgrade head
    alembic -c parking/migrations/alembic.ini -x url=sqlite:///scratch.db \\
        revision --autogenerate -m "what changed"
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from citybrain.parking.tables import VERSION_TABLE, metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database as -x url=DATABASE_URL")
    return url


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    if context.is_offline_mode():
        context.configure(
            url=_url(),
            target_metadata=metadata,
            version_table=VERSION_TABLE,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    given = context.config.attributes.get("connection")
    if given is not None:
        _migrate(given)
        return
    from citybrain.parking.store.engine import make_engine

    engine = make_engine(_url())
    try:
        with engine.begin() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


run()
