"""The DBA's fleet in tests/test_migrate_shards.py: extra comments migrations selected by a
settings module, and the commands and queries the tests run against the fleet.

Extra migrations for the comments app come from a throwaway migrations package (the real
migrations copied, plus test ones on top) selected by a settings module that sets
MIGRATION_MODULES: no test-only app in the project's settings.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploy.topology import PROJECT_DIR, LocalTopology
from shards.aliases import CONTROL_ALIAS

SHARDS = ["shard_0", "shard_1", "shard_2"]
ALIASES = [CONTROL_ALIAS, *SHARDS]

V2_MIGRATION = '''
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("comments", "{leaf}")]
    operations = [
        migrations.AddField("comment", "dba_note", models.CharField(max_length=50, null=True)),
        migrations.AddField("comment", "dba_rank", models.IntegerField(null=True)),
    ]
'''

V3_MIGRATION = '''
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("comments", "9001_dba_columns")]
    operations = [
        migrations.AddIndex("comment", models.Index(fields=["dba_note"], name="comments_dba_note")),
        migrations.AlterField("comment", "dba_rank", models.BigIntegerField(null=True)),
        migrations.AddField("comment", "dba_flag", models.BooleanField()),
        migrations.AddField("comment", "dba_ok", models.IntegerField(null=True)),
        migrations.AlterField("comment", "dba_note", models.TextField(null=True)),
    ]
'''


def prefix(alias: str, aliases: list[str] = ALIASES) -> str:
    return f"[{aliases.index(alias) + 1}/{len(aliases)} {alias}]"


REAL_MIGRATIONS = PROJECT_DIR / "comments" / "migrations"


def comments_release(root: Path, name: str, migrations: Iterable[Path],
                     extra: dict[str, str] | None = None) -> dict[str, str]:
    """Under `root`, a settings module selecting a comments migrations package `name` made of
    copies of `migrations` and of `extra` (file name -> source); the environment overrides
    that select it."""
    package = root / name / "comments"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    for source in migrations:
        shutil.copy(source, package / source.name)
    for filename, text in (extra or {}).items():
        (package / filename).write_text(text)
    (root / f"{name}_settings.py").write_text(
        "from project.settings import *  # noqa: F403\n"
        f'MIGRATION_MODULES = {{"comments": "{name}.comments"}}\n'
    )
    return {"DJANGO_SETTINGS_MODULE": f"{name}_settings",
            "PYTHONPATH": f"{root}{os.pathsep}{PROJECT_DIR}"}


def write_versions(root: Path, comments_leaf: str) -> dict[str, dict[str, str]]:
    """Under `root`, settings modules selecting comments migrations v2 (real + 9001_dba_columns)
    or v3 (+ 9002_dba_unsafe); returns each version's environment overrides."""
    v2 = {"9001_dba_columns.py": V2_MIGRATION.format(leaf=comments_leaf)}
    v3 = {**v2, "9002_dba_unsafe.py": V3_MIGRATION}
    return {version: comments_release(root, f"dba_{version}", REAL_MIGRATIONS.glob("*.py"), extra)
            for version, extra in (("v2", v2), ("v3", v3))}


def row(output: str, alias: str) -> str:
    """The summary table's row of `alias`."""
    rows = [line for line in output.splitlines() if re.match(rf"^{alias}\s", line)]
    assert rows, f"no summary row for {alias} in:\n{output}"
    return rows[-1]


def scalar(topo: LocalTopology, alias: str, sql: str, params: list[Any] | None = None) -> Any:
    with topo.admin_connect(topo.node(alias)) as conn:
        return conn.execute(sql, params or []).fetchone()[0]


def applied(topo: LocalTopology, alias: str, app: str, name: str) -> bool:
    with topo.admin_connect(topo.node(alias)) as conn:
        if conn.execute("SELECT to_regclass('django_migrations')").fetchone()[0] is None:
            return False
        return bool(conn.execute(
            "SELECT EXISTS (SELECT 1 FROM django_migrations WHERE app = %s AND name = %s)",
            [app, name],
        ).fetchone()[0])


def dummy_insert(conn: Any, table: str, overrides: dict[str, Any]) -> tuple[str, list[Any]]:
    """An INSERT filling every required column of `table` with a harmless value, so the test
    does not depend on the comments model's current fields."""
    columns = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s AND is_nullable = 'NO' AND column_default IS NULL",
        [table],
    ).fetchall()
    names, values = [], []
    for name, data_type in columns:
        names.append(name)
        if name in overrides:
            values.append(overrides[name])
        elif "int" in data_type or data_type == "numeric":
            values.append(1)
        elif data_type == "boolean":
            values.append(False)
        elif data_type.startswith("timestamp"):
            values.append(dt.datetime.now(dt.UTC))
        else:
            values.append("x")
    sql = (f"INSERT INTO {table} ({', '.join(names)}) "
           f"VALUES ({', '.join(['%s'] * len(names))}) RETURNING id")
    return sql, values
