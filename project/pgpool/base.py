"""``ENGINE = "project.pgpool"``: django-db-geventpool's psycopg 3 backend with its defects fixed.

What changes against geventpool (see ``pool.py`` for the pool itself):
- pools are keyed by what they connect to (``PoolKey``), not by alias alone, so a settings change
  or Django's test databases never reuse a pool that points at another database;
- each new physical connection gets Django's session setup (time zone, role, isolation level);
- ``close()`` always hands the connection back, rolled back, at the end of each request;
- the no-database wrapper Django uses for CREATE/DROP DATABASE is not pooled at all, like with
  Django's own pool: an idle pooled connection to ``postgres`` would serve nobody.
"""

from __future__ import annotations

import functools
import threading
from contextvars import ContextVar
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, DatabaseError
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql.base import Cursor as DjangoCursor
from django.db.backends.postgresql.base import DatabaseWrapper as DjangoDatabaseWrapper
from django.db.backends.postgresql.base import ServerBindingCursor
from django_db_geventpool.backends.postgresql_psycopg3.base import (
    DatabaseWrapper as GeventpoolDatabaseWrapper,
)
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus

from project.db_faults import commit_outcome_unknown

from .deadline import Deadline, current_deadline
from .errors import CommitOutcomeUnknown
from .gevent_wait import GeventConnection, under_gevent
from .options import POOL_KEYS, PoolOptions
from .pool import Connection, ConnectionPool, PoolKey
from .registry import close_all_pools, get_pool, retire_pool
from .session import SessionSetup
from .timeouts import timeouts_cursor_class

# The wrappers that took a pooled connection in this greenlet (thread), for return_checked_out.
# With the greenlet's id: a greenlet spawned with a copy of this context shares the list object
# but has wrappers of its own (Django's connections are per greenlet), so it starts a new list.
_checked_out: ContextVar[tuple[int, list[DatabaseWrapper]] | None] = ContextVar(
    "pgpool_checked_out", default=None)


def _connection_class() -> type[psycopg.Connection[Any]]:
    # Chosen when a pool is made: Gunicorn's gevent worker has patched `select` by then.
    return GeventConnection if under_gevent() else psycopg.Connection


def _note_checkout(wrapper: DatabaseWrapper) -> None:
    ident = threading.get_ident()
    held = _checked_out.get()
    if held is None or held[0] != ident:
        held = (ident, [])
        _checked_out.set(held)
    held[1].append(wrapper)


def return_checked_out(**kwargs: Any) -> None:
    """A request_finished receiver doing what Django's close_old_connections does for pooled
    wrappers (close_if_unusable_or_obsolete, which hands the connection back), but only for the
    wrappers of this greenlet that took a connection since the last call. close_old_connections
    walks every alias of the topology through Django's per-greenlet connection handler; a
    wrapper that holds no connection has nothing to give back."""
    held = _checked_out.get()
    if held is None or held[0] != threading.get_ident() or not held[1]:
        return
    wrappers = list(held[1])
    held[1].clear()
    for wrapper in wrappers:
        wrapper.close_if_unusable_or_obsolete()


class DatabaseWrapper(GeventpoolDatabaseWrapper):
    # Declared for mypy, which cannot see Django's untyped attributes without django-stubs.
    connection: Connection | None
    closed_in_transaction: bool
    run_on_commit: list[Any]

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(settings_dict, alias)
        self.pool_options = PoolOptions.from_settings(alias, settings_dict.get("OPTIONS") or {})
        # The pool the current connection came from: settings may change while it is out.
        self._checkout_pool: ConnectionPool | None = None
        # The deadline the current connection was checked out under, told when it goes back.
        self._checkout_deadline: Deadline | None = None
        # Django's cursor class, made to run every query under this alias's timeouts. Set on
        # each checkout: pools are shared by every wrapper that connects to the same place.
        opts = self.pool_options
        cursor_class: type = (
            ServerBindingCursor
            if (settings_dict.get("OPTIONS") or {}).get("server_side_binding") is True
            else DjangoCursor
        )
        if alias != NO_DB_ALIAS and (opts.statement_timeout or opts.lock_timeout):
            cursor_class = timeouts_cursor_class(
                cursor_class,
                statement_timeout=opts.statement_timeout,
                lock_timeout=opts.lock_timeout,
            )
        self._cursor_factory: type = cursor_class

    # -- pool lookup ---------------------------------------------------------------------------

    @property
    def pool(self) -> ConnectionPool | None:
        if self.alias == NO_DB_ALIAS:
            return None
        # While a connection is out, the pool it came from: Django asks for `pool` (only
        # whether there is one) in init_connection_state and in each health check, and
        # building the key from settings for each was 4 lookups per request.
        if self.connection is not None and self._checkout_pool is not None:
            return self._checkout_pool
        # Else looked up, not cached: test setup rewrites NAME on a live wrapper.
        return get_pool(self.pool_key(), self._new_pool)

    def pool_key(self) -> PoolKey:
        s = self.settings_dict
        options = s.get("OPTIONS") or {}
        name = s["NAME"]
        if name is None:
            dbname = "postgres"  # what Django connects to for NAME=None
        else:
            dbname = name or options.get("dbname") or f"service={options.get('service', '')}"
        return PoolKey(
            alias=self.alias,
            host=str(s["HOST"] or options.get("host", "")),
            port=str(s["PORT"] or options.get("port", "")),
            dbname=str(dbname),
            user=str(s["USER"] or options.get("user", "")),
        )

    def _new_pool(self) -> ConnectionPool:
        params = self.get_connection_params()
        # Like Django's own pool: Django sets autocommit itself on every checkout.
        params["autocommit"] = True
        opts = self.pool_options
        setup = SessionSetup(
            timezone_name=self.timezone_name,
            set_time_zone_sql=self.ops.set_time_zone_sql(),
            assume_role=opts.assume_role,
            isolation_level=opts.isolation_level,
        )
        return ConnectionPool(
            name=self.alias,
            connect=functools.partial(_connection_class().connect, **params),
            configure=setup,
            max_size=opts.max_conns,
            reuse=opts.reuse_conns,
            timeout=opts.pool_timeout,
            check_idle_after=opts.check_idle_after,
        )

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        # Django copies all OPTIONS into the connect kwargs and geventpool adds some back;
        # psycopg.connect() would reject ours as unknown connection parameters.
        for key in POOL_KEYS:
            params.pop(key, None)
        params["cursor_factory"] = self._cursor_factory
        return params

    # -- checkout and return -------------------------------------------------------------------

    def get_new_connection(self, conn_params: dict[str, Any]) -> Connection:
        pool = self.pool
        if pool is None:
            return DjangoDatabaseWrapper.get_new_connection(self, conn_params)
        # Django sets this per checkout in its get_new_connection, which geventpool replaced;
        # the connection itself got its isolation level once, in SessionSetup.
        level = self.pool_options.isolation_level
        self.isolation_level = IsolationLevel.READ_COMMITTED if level is None else level
        deadline = current_deadline()
        if deadline is not None:
            # Past the deadline nothing new starts; a wait for a slot that outlasts it is
            # interrupted by the deadline's backstop (project/deadline.py).
            deadline.check()
        conn = pool.getconn()
        _note_checkout(self)
        conn.cursor_factory = self._cursor_factory
        if deadline is not None:
            deadline.track(conn)
            self._checkout_deadline = deadline
        self._checkout_pool = pool
        return conn

    def close(self) -> None:
        """Hand the connection back to its pool; Django calls this at the end of each request."""
        self.validate_thread_sharing()
        self.run_on_commit = []
        if self.closed_in_transaction or self.connection is None:
            return
        try:
            self._close()
        finally:
            if self.in_atomic_block:
                # As Django does: the enclosing atomic() must fail rather than reconnect.
                self.closed_in_transaction = True
                self.needs_rollback = True
            # Unlike Django, never keep the object: it may already serve another greenlet.
            self.connection = None

    def _close(self) -> None:
        conn, pool, deadline = self.connection, self._checkout_pool, self._checkout_deadline
        self.connection = None
        self._checkout_pool = None
        self._checkout_deadline = None
        if conn is None:
            return
        if deadline is not None:
            deadline.untrack(conn)
        if pool is None:
            with self.wrap_database_errors:
                conn.close()
            return
        # Rolls back an open transaction; a connection that is broken or fails the rollback is
        # closed and its slot freed, so returning never raises into request teardown.
        pool.putconn(conn)

    def _set_autocommit(self, autocommit: bool) -> None:
        # Django sets autocommit on every checkout, and pooled connections come out of the pool
        # in autocommit already. psycopg's setter runs a generator through its wait loop even
        # when the value does not change; with the value unchanged on an idle connection it
        # does nothing else (it refuses only a change inside a transaction, and syncs only a
        # pipeline, which Django never opens).
        conn = self.connection
        if (conn is not None and conn.autocommit == autocommit
                and conn.pgconn.transaction_status == TransactionStatus.IDLE):
            return
        super()._set_autocommit(autocommit)

    # -- commit --------------------------------------------------------------------------------

    def _commit(self) -> None:
        # A connection lost while COMMIT was on its way leaves the transaction committed or
        # not, and nobody can tell which: say so, so no caller runs the write again blindly.
        try:
            super()._commit()
        except DatabaseError as exc:
            if commit_outcome_unknown(exc):
                raise CommitOutcomeUnknown(self.alias) from exc
            raise

    # -- pool lifecycle ------------------------------------------------------------------------

    def close_pool(self) -> None:
        # Django calls this when TIME_ZONE/USE_TZ change and before cloning or dropping a
        # test database: new connections must come from a pool built from current settings.
        if self.alias != NO_DB_ALIAS:
            retire_pool(self.pool_key())

    def closeall(self) -> None:
        # geventpool's test-database teardown calls this.
        close_all_pools()
