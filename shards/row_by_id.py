"""One row of a sharded model by its id, read with a statement compiled once.

Read through the ORM (`Model.objects.filter(id=...).first()`), the API's most frequent read
builds a queryset, its tenant and id filters and their SQL again on every request: a third of
the Python work of the whole request. A RowById keeps everything of that read that matters
(the current tenant's scope, the router's choice of server with its causal and lag rules,
ShardedQuerySet's retries on a failing replica or a primary failing over, the connection's
execute wrappers: statement timeouts and query metrics) and compiles the statement once.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from django.db import connections, router

from shards.errors import NoTenantContext
from shards.sharded import ShardedModel, retrying_read
from shards.tenancy import current_tenant

M = TypeVar("M", bound=ShardedModel)

# Marks for the two parameters while compiling: their places in the compiled statement's
# parameters say which is which, whatever order the ORM writes the conditions in.
_TENANT_MARK = -1
_ID_MARK = -2


class RowById(Generic[M]):
    """`get(id)`: the current tenant's row of `model` with that id, or None."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        # (SQL, the attributes its columns fill, the tenant's place among the parameters), or
        # None until the first read: compiling needs a connection, not available at import.
        self._statement: tuple[str, list[str], int] | None = None

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
