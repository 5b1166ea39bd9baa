"""One row of a sharded model by its id, read (or a counter of it raised) with a statement
compiled once.

Read through the ORM (`Model.objects.filter(id=...).first()`), the API's most frequent read
builds a queryset, its tenant and id filters and their SQL again on every request: a third of
the Python work of the whole request. A RowById keeps everything of that read that matters
(the current tenant's scope, the router's choice of server with its causal and lag rules,
ShardedQuerySet's retries on a failing replica or a primary failing over, the connection's
execute wrappers: statement timeouts and query metrics) and compiles the statement once. The
same goes for the write path's counter update (a thread's comment count, in every comment's
transaction): `add` is the ORM's `filter(id=...).update(field=F(field) + n)`, compiled once.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from django.db import connections, router
from django.db.models import F, Q, Value
from django.db.models.sql import UpdateQuery

from shards.errors import NoTenantContext
from shards.sharded import ShardedModel, retrying_read
from shards.tenancy import current_tenant

M = TypeVar("M", bound=ShardedModel)

# Marks for the parameters while compiling: their places in the compiled statement's parameters
# say which is which, whatever order the ORM writes the conditions in.
_TENANT_MARK = -1
_ID_MARK = -2
_DELTA_MARK = -3


class RowById(Generic[M]):
    """`get(id)`: the current tenant's row of `model` with that id, or None."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        # (SQL, the attributes its columns fill, the tenant's place among the parameters), or
        # None until the first read: compiling needs a connection, not available at import.
        self._statement: tuple[str, list[str], int] | None = None
        # field -> (UPDATE statement, the places of delta, tenant and id among its parameters)
        self._updates: dict[str, tuple[str, tuple[int, int, int]]] = {}

    def get(self, row_id: int) -> M | None:
        entry = current_tenant()
        if entry is None:
            raise NoTenantContext(self.model._meta.label)
        tenant_id = entry.id
        model = self.model
        return retrying_read(lambda: router.db_for_read(model),
                             lambda alias: self._fetch(alias, tenant_id, row_id))

    def _fetch(self, alias: str, tenant_id: int, row_id: int) -> M | None:
        sql, names, tenant_at = self._statement or self._compile(alias)
        params = [row_id, row_id]
        params[tenant_at] = tenant_id
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        return self.model.from_db(alias, names, row)

    def _compile(self, alias: str) -> tuple[str, list[str], int]:
        query = self.model.unscoped.filter(tenant_id=_TENANT_MARK, id=_ID_MARK)[:1].query
        compiler = query.get_compiler(alias)
        sql, params = compiler.as_sql()
        columns = [column for column, _, _ in compiler.select]
        if sorted(params) != [_ID_MARK, _TENANT_MARK] or compiler.get_converters(columns):
            # A model whose values need converting (or a query the ORM writes otherwise) is
            # not for this reader: refused when it is first used, so tests find it.
            raise TypeError(f"{self.model._meta.label} cannot be read by RowById: {sql}")
        names = [column.target.attname for column in columns]
        self._statement = (sql, names, list(params).index(_TENANT_MARK))
        return self._statement

    def add(self, row_id: int, field: str, delta: int) -> int:
        """Add `delta` to `field` of the current tenant's row `row_id` on its primary, as
        `filter(id=row_id).update(field=F(field) + delta)` does: rows updated, 0 or 1."""
        alias = router.db_for_write(self.model)
        sql, params = self.add_statement(alias, row_id, field, delta)
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.rowcount)

    def add_statement(self, alias: str, row_id: int, field: str,
                      delta: int) -> tuple[str, list[int]]:
        """`add`'s UPDATE and its parameters, for a caller that sends it as part of a larger
        statement (e.g. in a WITH, with a RETURNING of its own)."""
        entry = current_tenant()
        if entry is None:
            raise NoTenantContext(self.model._meta.label)
        sql, places = self._updates.get(field) or self._compile_update(alias, field)
        params = [0, 0, 0]
        for place, value in zip(places, (delta, entry.id, row_id), strict=True):
            params[place] = value
        return sql, params

    def _compile_update(self, alias: str, field: str) -> tuple[str, tuple[int, int, int]]:
        query = UpdateQuery(self.model)
        query.add_q(Q(tenant_id=_TENANT_MARK, id=_ID_MARK))
        query.add_update_values({field: F(field) + Value(_DELTA_MARK)})
        sql, params = query.get_compiler(alias).as_sql()
        marks = (_DELTA_MARK, _TENANT_MARK, _ID_MARK)
        if sorted(params) != sorted(marks):
            raise TypeError(f"{self.model._meta.label}.{field} cannot be added to by RowById: "
                            f"{sql}")
        places = (params.index(_DELTA_MARK), params.index(_TENANT_MARK), params.index(_ID_MARK))
        self._updates[field] = (sql, places)
        return self._updates[field]
