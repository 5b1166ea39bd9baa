"""A comment page read from its shard with statements written once: whether the tenant has the
thread, the root comments of the page, and their replies, as the dicts the page is made of.

Through the ORM a page build made two querysets (their filters, ordering and slice), compiled
their SQL and built a model instance per row, on every build: py-spy put the ORM's query
building and compiling at about a third of a build's samples, and a page built from the
database is what a cache miss, and every page after a write to its thread, costs. The
statements are the ones the ORM sent, written out once per order (the same conditions, so the
same indexes serve them: (tenant_id, thread, id) and (tenant_id, thread, score, id) for the
roots, (tenant_id, root) for the replies, whose id list is one array parameter instead of an
IN list). Rows become the page's dicts directly.

The three statements go in one message, one round trip (the replies' statement finds the page's
roots again itself): as three round trips, with the thread read through its own routing and
retries, the reads cost a page build two more psycopg executions, PgBouncer and PostgreSQL
turns, and a router decision.

What the ORM's reads did around the statements is kept: the current tenant's scope, the
router's choice of server (causal minimum and lag rules), `retrying_read`'s retries on a
failing replica or a primary failing over (the two statements are one attempt, on one
server), and the connection's execute wrappers (statement timeouts, query metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, router
from django.db.models import Field

from comments import cursors
from comments.models import Comment, Thread
from comments.schemas import Order
from shards.errors import NoTenantContext
from shards.sharded import retrying_read
from shards.tenancy import current_tenant

MAX_REPLIES_PER_PAGE = 500

# The columns a page shows, in the order the statements select them.
FIELDS = ("id", "thread_id", "parent_id", "author", "author_name", "body", "deleted", "score",
           "depth", "created_at", "edited_at")
# Per order: the roots' condition after a cursor, and their ordering. A "top" cursor's key is
# (score, id); its condition takes the score twice.
_AFTER = {
    "newest": ("AND {id} < %s", "{id} DESC"),
    "oldest": ("AND {id} > %s", "{id} ASC"),
    "top": ("AND ({score} < %s OR ({score} = %s AND {id} < %s))", "{score} DESC, {id} DESC"),
}

_statements: dict[tuple[str, bool], str] = {}


def _column(name: str, model: type[Comment] | type[Thread] = Comment) -> str:
    field = model._meta.get_field(name)
    assert isinstance(field, Field)
    return str(field.column)


def _names(alias: str) -> dict[str, str]:
    quote = connections[alias].ops.quote_name
    names = {f: quote(_column(f)) for f in (*FIELDS, "tenant_id", "root_id")}
    names["table"] = quote(Comment._meta.db_table)
    names["columns"] = ", ".join(names[f] for f in FIELDS)
    return names


def _page_sql(alias: str, order: str, after: bool) -> str:
    """The page's three statements. Parameters: tenant, thread; then the roots' (tenant,
    thread, the cursor's values, limit + 1); then the replies' (tenant, and the roots' again
    with limit, then the replies' limit)."""
    sql = _statements.get((order, after))
    if sql is None:
        n = _names(alias)
        quote = connections[alias].ops.quote_name
        condition, ordering = _AFTER[order]

        def roots(columns: str) -> str:
            return (f"SELECT {columns} FROM {n['table']} "
                    f"WHERE {n['tenant_id']} = %s AND {n['thread_id']} = %s "
                    f"AND {n['parent_id']} IS NULL "
                    + (condition.format(**n) + " " if after else "")
                    + f"ORDER BY {ordering.format(**n)} LIMIT %s")

        thread = (f"SELECT EXISTS (SELECT 1 FROM {quote(Thread._meta.db_table)} "
                  f"WHERE {quote(_column('tenant_id', Thread))} = %s "
                  f"AND {quote(_column('id', Thread))} = %s)")
        replies = (f"SELECT {n['columns']} FROM {n['table']} "
                   f"WHERE {n['tenant_id']} = %s AND {n['root_id']} = ANY(ARRAY("
                   + roots(n["id"]) + f")) ORDER BY {n['id']} LIMIT %s")
        sql = f"{thread}; {roots(n['columns'])}; {replies}"
        _statements[(order, after)] = sql
    return sql


def comment_item(row: Sequence[Any]) -> dict[str, Any]:
    """A comment as a page (and the API's answers) show it, from its values in FIELDS' order."""
    (id_, thread_id, parent_id, author, author_name, body, deleted, score, depth, created_at,
     edited_at) = row
    return {
        "id": id_, "thread_id": thread_id, "parent_id": parent_id, "author": author,
        "author_name": author_name, "body": "" if deleted else body, "deleted": deleted,
        "score": score, "depth": depth, "created_at": created_at.isoformat(),
        "edited_at": edited_at.isoformat() if edited_at else None, "replies": [],
    }


def comment_page(thread_id: int, order: Order, cursor: str | None,
                 limit: int) -> dict[str, Any] | None:
    """One page of the current tenant's top-level comments of the thread, with their whole
    reply trees (replies oldest first): {"items": [...], "next_cursor": ... or None}; None
    when the tenant has no such thread."""
    entry = current_tenant()
    if entry is None:
        raise NoTenantContext(Comment._meta.label)
    after = cursors.decode(cursor, order) if cursor else None
    if after is not None and order == "top":
        after = [after[0], after[0], after[1]]  # score, score, id

    roots_params = [entry.id, thread_id, *(after or ())]
    params = [entry.id, thread_id, *roots_params, limit + 1,
              entry.id, *roots_params, limit, MAX_REPLIES_PER_PAGE]

    def read(alias: str) -> tuple[bool, list[Any], list[Any]]:
        with connections[alias].cursor() as db:
            db.execute(_page_sql(alias, order, after is not None), params)
            (found,) = db.fetchone()
            db.nextset()
            roots = db.fetchall()
            db.nextset()
            return found, roots, db.fetchall()

    found, roots, replies = retrying_read(lambda: router.db_for_read(Comment), read)
    if not found:
        return None
    more = len(roots) > limit
    page = roots[:limit]
    items = [comment_item(row) for row in page]
    by_id = {item["id"]: item for item in items}
    for row in replies:
        node = comment_item(row)
        by_id[node["id"]] = node
        parent = by_id.get(node["parent_id"])
        if parent is not None:
            parent["replies"].append(node)
    next_cursor = None
    if more and page:
        last = items[-1]
        key = [last["score"], last["id"]] if order == "top" else [last["id"]]
        next_cursor = cursors.encode(order, key)
    return {"items": items, "next_cursor": next_cursor}
