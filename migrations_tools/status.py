"""Which migration is applied where: the data behind shard_showmigrations.

Every primary is read over its direct DSN (replicas mirror their primary). A migration is
"relevant" on a database when its app's operations run there (the router's allow_migrate); Django
records the others too, as no-ops. Drift is a relevant migration applied on some databases and
not on others, or one recorded somewhere but missing from disk (applied by another release).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import connections, router
from django.db.migrations.loader import MigrationLoader

from migrations_tools.connections import direct_connections
from migrations_tools.plans import fan_out
from migrations_tools.run_graph import LOADER_LOCK
from migrations_tools.safety import error_summary

MigrationKey = tuple[str, str]


@dataclass
class DatabaseState:
    alias: str
    applied: set[MigrationKey] = field(default_factory=set)
    on_disk: list[MigrationKey] = field(default_factory=list)  # graph order
    # Migrations on disk that a squashed one replaces, in this database's graph or not (it
    # holds the squashed one unless only some of them are applied here).
    replaced: set[MigrationKey] = field(default_factory=set)
    error: str | None = None


def read_state(alias: str) -> DatabaseState:
    state = DatabaseState(alias=alias)
    try:
        with direct_connections(alias, application_name="shardsvc shard_showmigrations"):
            with LOADER_LOCK:
                loader = MigrationLoader(connections[alias], ignore_no_migrations=True)
            state.applied = set(loader.applied_migrations)
            state.replaced = {key for squashed in loader.replacements.values()
                              for key in squashed.replaces}
            # Forwards order of the whole graph, as showmigrations --plan lists it.
            seen: set[MigrationKey] = set()
            for leaf in loader.graph.leaf_nodes():
                for key in loader.graph.forwards_plan(leaf):
                    if key not in seen:
                        seen.add(key)
                        state.on_disk.append(key)
    except Exception as exc:  # one unreachable database must not hide the others
        state.error = error_summary(exc)
    return state


@dataclass
class Row:
    key: MigrationKey
    cells: dict[str, str]  # alias -> "X" applied, "." unapplied, "-" not for this database
    drift: str = ""  # why this row is drift, or ""

    @property
    def label(self) -> str:
        return f"{self.key[0]}.{self.key[1]}"


def matrix(aliases: Sequence[str], *, jobs: int, apps: Sequence[str] | None = None
           ) -> tuple[list[DatabaseState], list[Row]]:
    states = fan_out(aliases, read_state, jobs=jobs)
    readable = [s for s in states if s.error is None]
    order: list[MigrationKey] = []
    for state in readable:
        for key in state.on_disk:
            if key not in order:
                order.append(key)
    on_disk = set(order).union(*(s.replaced for s in readable))
    for state in readable:  # recorded but gone from disk: appended at the end
        for key in sorted(state.applied - on_disk):
            if key not in order:
                order.append(key)
    rows = []
    for key in order:
        if apps and key[0] not in apps:
            continue
        cells: dict[str, str] = {}
        relevant_applied: list[bool] = []
        for state in states:
            if state.error is not None:
                cells[state.alias] = "?"
                continue
            applied = key in state.applied
            if not router.allow_migrate(state.alias, key[0]):
                cells[state.alias] = "-"
                continue
            cells[state.alias] = "X" if applied else "."
            relevant_applied.append(applied)
        row = Row(key=key, cells=cells)
        if key not in on_disk:
            where = [s.alias for s in readable if key in s.applied]
            row.drift = f"applied on {', '.join(where)} but not on disk"
        elif relevant_applied and any(relevant_applied) and not all(relevant_applied):
            missing = [a for a, c in cells.items() if c == "."]
            row.drift = f"unapplied on {', '.join(missing)}"
        rows.append(row)
    return states, rows
