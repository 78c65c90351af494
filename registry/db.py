"""Database engine, start-up migrations and sessions.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and write transactions
start with ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing on a lock
upgrade. PostgreSQL uses row locks (``SELECT ... FOR UPDATE``) in the service instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from lorahive.hub.errors import ServiceUnavailableError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_PG_MIGRATION_LOCK = 0x6C6F7261  # advisory lock id: one migrator at a time
SQLITE_POOL = 40


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for ``url``; SQLite files get their directory created and sane pragmas."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # as many pooled connections as request threads (anyio's default limit, 40): a
        # connection past the pool size is opened (pragmas included) and closed per request
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60},
                               pool_size=max(pool_size, SQLITE_POOL), max_overflow=SQLITE_POOL)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # type: ignore[no-untyped-def]
            opts = conn.get_execution_options()
            if opts.get("lorahive_autocommit"):
                return  # a lone read: SQLite runs each statement in its own read transaction
            conn.exec_driver_sql("BEGIN IMMEDIATE" if opts.get("sqlite_immediate") else "BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size * 2,
                           pool_pre_ping=True)
    # lone reads (read_connection) get a pool of their own whose connections stay in
    # autocommit (switching a pooled connection to autocommit and back costs a round trip,
    # SET SESSION CHARACTERISTICS, on every request) and that never overflows: a read past
    # the pool waits a moment for a connection instead of forking a PostgreSQL backend
    # for itself, which under load cost more than the queue
    reads = create_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True,
                          isolation_level="AUTOCOMMIT")
    engine.lorahive_reads = reads  # type: ignore[attr-defined]
    event.listen(engine, "engine_disposed", lambda _e: reads.dispose())
    return engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; serialised across processes on PostgreSQL)."""
    cfg = alembic_config()
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as e:
        raise ServiceUnavailableError(f"cannot reach the database: {e.orig}") from None


def ensure_schema(engine: Engine) -> None:
    """Apply pending migrations on start-up; a no-op when the schema is at head."""
    try:
        at = current_revision(engine)
    except OperationalError as e:
        raise ServiceUnavailableError(f"cannot reach the database: {e.orig}") from None
    if at != head_revision():
        migrate(engine)


@contextlib.contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A pooled connection for one lone read (a resolve): no ``BEGIN``/``COMMIT`` round
    trips and no ORM session, the statement sees its own consistent snapshot."""
    reads = getattr(engine, "lorahive_reads", None)
    if reads is not None:
        with reads.connect() as conn:
            yield conn
        return
    opts = ({"lorahive_autocommit": True} if engine.dialect.name == "sqlite"
            else {"isolation_level": "AUTOCOMMIT"})
    with engine.connect().execution_options(**opts) as conn:
        yield conn


@contextlib.contextmanager
def session_scope(engine: Engine, write: bool = False) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        if write and engine.dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_immediate": True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
