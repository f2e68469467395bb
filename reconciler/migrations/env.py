"""Alembic environment for the consul-reconciler audit database.

Two ways in:

* programmatic (what :class:`reconciler.store.AuditLog` does): the caller puts an open
  SQLAlchemy ``Connection`` in ``config.attributes["connection"]``; it is used as is,
  inside whatever transaction the caller began, and no ``alembic.ini`` is read;
* command line / URL mode: ``alembic -c reconciler/migrations/alembic.ini upgrade head``
  (``--sql`` for offline mode).  The URL comes from ``-x url=...``, then the
  ``sqlalchemy.url`` option, then ``$CONSUL_RECONCILER_DB``, then the default file.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, MetaData, create_engine, pool

config = context.config


def _target_metadata() -> MetaData | None:
    """The models' metadata, for ``alembic revision --autogenerate``."""
    metadata = config.attributes.get("target_metadata")
    if isinstance(metadata, MetaData):
        return metadata
    try:
        from reconciler.store.models import Base
    except ImportError:  # pragma: no cover - only without the package importable
        return None
    return Base.metadata


def _url() -> str:
    from reconciler.store import default_database_url, normalize_url

    x_url = context.get_x_argument(as_dictionary=True).get("url")
    if x_url:
        return normalize_url(x_url)
    configured = config.get_main_option("sqlalchemy.url")
    if configured:
        return normalize_url(configured)
    return default_database_url()


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=_target_metadata(),
        compare_type=True,
        # SQLite can only ALTER by copying tables; batch mode makes future migrations portable.
        render_as_batch=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout for the configured URL's dialect."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            _run_on(conn)
    finally:
        engine.dispose()


if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
