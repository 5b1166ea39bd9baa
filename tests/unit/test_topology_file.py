"""The topology file -> ShardMap and DATABASES. These only parse files: no database, no settings."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from shards.errors import UnknownAlias, UnknownShard
from shards.topology import ShardMap, databases_setting, load_shard_map

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
[control]
dsn = "postgresql://app@127.0.0.1:15400/control"
direct_dsn = "postgresql://postgres@127.0.0.1:15410/app"
[[control.replicas]]
dsn = "postgresql://app@127.0.0.1:15400/control_replica_1"
direct_dsn = "postgresql://postgres@127.0.0.1:15411/app"

[[shards]]
name = "shard_0"
dsn = "postgresql://app:s3cret@127.0.0.1:15400/shard_0"
direct_dsn = "host=127.0.0.1 port=15412 dbname=app user=postgres sslmode=disable"
[[shards.replicas]]
dsn = "postgresql://app@127.0.0.1:15400/shard_0_replica_1"
direct_dsn = "postgresql://postgres@127.0.0.1:15413/app"

[[shards]]
name = "shard_1"
dsn = "postgresql://app@127.0.0.1:15400/shard_1"
direct_dsn = "postgresql://postgres@127.0.0.1:15414/app"
[[shards.replicas]]
dsn = "postgresql://app@127.0.0.1:15400/shard_1_replica_1"
direct_dsn = "postgresql://postgres@127.0.0.1:15415/app"

[redis]
url = "redis://127.0.0.1:15401/0"
"""

ALIASES = (
    "default",
    "default_replica_1",
    "shard_0",
    "shard_0_replica_1",
    "shard_1",
    "shard_1_replica_1",
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text)
    return path


@pytest.fixture
def shard_map(tmp_path: Path) -> ShardMap:
    return load_shard_map(write(tmp_path, GOOD))


# --- a good file -----------------------------------------------------------------------------


def test_aliases_roles_and_clusters(shard_map: ShardMap, tmp_path: Path) -> None:
    assert tuple(s.alias for s in shard_map.servers()) == ALIASES
    assert [s.role for s in shard_map.servers()] == ["primary", "replica"] * 3
    assert shard_map.shard_names == ("shard_0", "shard_1")
    assert [c.name for c in shard_map.clusters] == ["default", "shard_0", "shard_1"]
    assert shard_map.control.name == "default"
    assert shard_map.redis_url == "redis://127.0.0.1:15401/0"
    assert shard_map.source == tmp_path / "topology.toml"

    shard_1 = shard_map.shard("shard_1")
    assert shard_1.primary.alias == "shard_1"
    assert [r.alias for r in shard_1.replicas] == ["shard_1_replica_1"]
    assert shard_1.replicas[0].dsn == "postgresql://app@127.0.0.1:15400/shard_1_replica_1"

    assert shard_map.server("shard_0_replica_1").role == "replica"
    assert shard_map.cluster_of("shard_0_replica_1") is shard_map.shard("shard_0")
    assert shard_map.cluster_of("default_replica_1") is shard_map.control


def test_unknown_names_raise_lookup_errors(shard_map: ShardMap) -> None:
    with pytest.raises(UnknownShard, match="shard_0, shard_1") as info:
        shard_map.shard("shard_9")
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownAlias, match="shard_1_replica_1"):
        shard_map.server("shard_1_replica_2")
    with pytest.raises(LookupError):
        shard_map.cluster_of("nope")


def test_map_is_immutable_and_copies(shard_map: ShardMap) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        shard_map.redis_url = "redis://elsewhere/0"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(shard_map)) == shard_map
    assert copy.deepcopy(shard_map).shard("shard_0") == shard_map.shard("shard_0")
    # DSNs and the redis URL may carry passwords: never in a repr.
    assert "s3cret" not in repr(shard_map)


def test_databases_setting_pooled(shard_map: ShardMap) -> None:
    options = {"MAX_CONNS": 10, "nested": {"a": 1}}
    databases = databases_setting(shard_map, options=options)
    assert tuple(databases) == ALIASES
    assert databases["shard_0"] == {
        "ENGINE": "project.pgpool",
        "NAME": "shard_0",
        "USER": "app",
        "PASSWORD": "s3cret",
        "HOST": "127.0.0.1",
        "PORT": "15400",
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "ATOMIC_REQUESTS": False,
        "OPTIONS": options,
        "TEST": {"NAME": "shard_0"},
    }
    replica = databases["shard_1_replica_1"]
    assert (replica["NAME"], replica["PASSWORD"]) == ("shard_1_replica_1", "")
    assert replica.keys() == databases["shard_0"].keys()
    # OPTIONS is a deep copy per alias: mutating one touches neither the others nor the input.
    databases["shard_0"]["OPTIONS"]["nested"]["a"] = 2
    assert options["nested"]["a"] == 1
    assert databases["shard_1"]["OPTIONS"]["nested"]["a"] == 1


def test_databases_setting_direct(shard_map: ShardMap) -> None:
    databases = databases_setting(
        shard_map, engine="django.db.backends.postgresql", use_direct=True
    )
    shard_0 = databases["shard_0"]
    assert shard_0["ENGINE"] == "django.db.backends.postgresql"
    assert (shard_0["HOST"], shard_0["PORT"], shard_0["NAME"], shard_0["USER"]) == (
        "127.0.0.1",
        "15412",
        "app",
        "postgres",
    )
    # Conninfo keys with no DATABASES slot still reach psycopg through OPTIONS.
    assert shard_0["OPTIONS"] == {"sslmode": "disable"}
    assert databases["shard_1_replica_1"]["PORT"] == "15415"
    assert databases["default"]["OPTIONS"] == {}


def test_get_shard_map_reads_settings_once(tmp_path: Path) -> None:
    # In a fresh interpreter: this module must not configure settings for the other test modules.
    path = write(tmp_path, GOOD)
    script = textwrap.dedent(f"""
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
        from django.test import override_settings
        from shards.runtime import runtime
        from shards.topology import get_shard_map, load_shard_map

        first = load_shard_map({str(path)!r})
        settings.configure(SHARDSVC={{"SHARD_MAP": first}})
        assert get_shard_map() is first
        second = load_shard_map({str(path)!r})
        settings.SHARDSVC = {{"SHARD_MAP": second}}
        assert get_shard_map() is first  # cached until reset
        runtime.reset()
        assert get_shard_map() is second
        with override_settings(SHARDSVC={{}}):
            try:
                get_shard_map()
            except ImproperlyConfigured as e:
                assert "load_shard_map" in str(e), e
            else:
                raise AssertionError("no error without SHARD_MAP")
        assert get_shard_map() is second
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- bad files -------------------------------------------------------------------------------


def edit(old: str, new: str, count: int = 1) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, count)


def drop_section(header: str, lines: int) -> str:
    """GOOD without `header` and the `lines` lines after it."""
    out = GOOD.splitlines(keepends=True)
    start = out.index(header + "\n")
    return "".join(out[:start] + out[start + 1 + lines :])


SHARD_1 = 'name = "shard_1"\n'
CONTROL_DSN = 'dsn = "postgresql://app@127.0.0.1:15400/control"\n'
SHARD_0_DSN = 'dsn = "postgresql://app:s3cret@127.0.0.1:15400/shard_0"\n'
NO_SHARDS = GOOD.split("[[shards]]")[0] + '[redis]\nurl = "redis://127.0.0.1:15401/0"\n'

BAD_FILES = [
    # (case id, file text, phrases the message must contain)
    (
        "invalid-toml",
        edit(CONTROL_DSN, "dsn = \n"),
        ["invalid TOML", "line 2", "correct the syntax"],
    ),
    ("not-utf8", GOOD + "# \udcff\n", ["not UTF-8", "save the file as UTF-8"]),
    ("no-control", drop_section("[control]", 6), ["no [control] table", "add a [control] table"]),
    ("control-array", edit("[control]", "[[control]]"), ["[control]: must be a table"]),
    ("control-no-dsn", edit(CONTROL_DSN, ""), ["[control]: missing dsn", "add dsn = "]),
    (
        "control-no-direct-dsn",
        edit('direct_dsn = "postgresql://postgres@127.0.0.1:15410/app"\n', ""),
        ["[control]: missing direct_dsn", "add direct_dsn = "],
    ),
    ("shard-no-name", edit(SHARD_1, ""), ["[[shards]] #2: missing name", 'add name = "shard_N"']),
    (
        "shard-no-dsn",
        edit(SHARD_0_DSN, ""),
        ['[[shards]] #1 (name = "shard_0"): missing dsn', "add dsn = "],
    ),
    (
        "duplicate-shard",
        edit(SHARD_1, 'name = "shard_0"\n'),
        ["[[shards]] #2", "duplicate shard name, also used by [[shards]] #1", "unique name"],
    ),
    (
        "name-pattern",
        edit(SHARD_1, 'name = "Shard-1"\n'),
        ['invalid shard name "Shard-1"', "lowercase"],
    ),
    (
        "name-too-long",
        edit(SHARD_1, f'name = "s{"x" * 40}"\n'),
        ["invalid shard name", "1-40 characters"],
    ),
    ("name-empty", edit(SHARD_1, 'name = ""\n'), ["name must be a non-empty string", "add name ="]),
    (
        "name-default",
        edit(SHARD_1, 'name = "default"\n'),
        ["control database's alias", "pick another name"],
    ),
    (
        "name-replica",
        edit(SHARD_1, 'name = "a_replica_1"\n'),
        ['contains "_replica_"', "pick a name without it"],
    ),
    (
        "unknown-top-key",
        edit("[redis]", "[redis]\n[shard]\nname = 1\n[redis2]"),
        ["top level: unknown key(s) redis2, shard", "allowed keys here are control, shards, redis"],
    ),
    (
        "replica-typo",
        edit("[[control.replicas]]", "[[control.replica]]"),
        ["[control]: unknown key(s) replica", "allowed keys here are dsn, direct_dsn, replicas"],
    ),
    (
        "shard-key-typo",
        edit(SHARD_1, 'name = "shard_1"\ndns = "x"\n'),
        [
            "[[shards]] #2: unknown key(s) dns",
            "allowed keys here are name, dsn, direct_dsn, replicas",
        ],
    ),
    (
        "replica-key-typo",
        edit("[[shards.replicas]]\n", "[[shards.replicas]]\nrole = 'replica'\n"),
        ['[[shards.replicas]] #1 of [[shards]] #1 (name = "shard_0"): unknown key(s) role'],
    ),
    (
        "redis-key-typo",
        edit("url =", "uri ="),
        ["[redis]: unknown key(s) uri", "allowed keys here are url"],
    ),
    (
        "dsn-unparsable",
        edit(SHARD_0_DSN, 'dsn = "host=h dbname"\n'),
        ['[[shards]] #1 (name = "shard_0")', "dsn does not parse as a PostgreSQL DSN", "key=value"],
    ),
    (
        "dsn-no-host",
        edit(SHARD_0_DSN, 'dsn = "postgresql://app:s3cret@/shard_0"\n'),
        ["dsn has no host", "postgresql://user@host:port/dbname"],
    ),
    (
        "dsn-no-dbname",
        edit(CONTROL_DSN, 'dsn = "host=h user=app"\n'),
        ["[control]: dsn has no dbname"],
    ),
    (
        "replica-dsn-no-host",
        edit(
            'direct_dsn = "postgresql://postgres@127.0.0.1:15415/app"',
            'direct_dsn = "dbname=app"',
        ),
        ['[[shards.replicas]] #1 of [[shards]] #2 (name = "shard_1"): direct_dsn has no host'],
    ),
    (
        "dsn-bad-port",
        edit(CONTROL_DSN, 'dsn = "postgresql://app@h:pgport/control"\n'),
        ["port that is not a number", "digits"],
    ),
    (
        "dsn-not-string",
        edit(CONTROL_DSN, "dsn = 5432\n"),
        ["dsn must be a non-empty string, got an integer"],
    ),
    ("no-redis", GOOD.split("[redis]")[0], ["no [redis] table", 'url = "redis://host:port/0"']),
    (
        "no-redis-url",
        edit('url = "redis://127.0.0.1:15401/0"', ""),
        ["[redis]: missing url", "add url ="],
    ),
    ("redis-scheme", edit("redis://127", "http://127"), ["url must start with redis://"]),
    ("no-shards", NO_SHARDS, ["no shards", "add at least one [[shards]] table"]),
    (
        "empty-shards",
        "shards = []\n" + NO_SHARDS,
        ["no shards", "add at least one [[shards]] table"],
    ),
    (
        "replicas-table",
        edit("[[control.replicas]]", "[control.replicas]"),
        ["[control] replicas: must be an array of tables, got a table", "[[control.replicas]]"],
    ),
    (
        "shards-table",
        NO_SHARDS.replace("[redis]", f"[shards]\n{SHARD_1}{CONTROL_DSN}[redis]"),
        ["shards: must be an array of tables"],
    ),
]


@pytest.mark.parametrize(
    ("text", "phrases"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file(tmp_path: Path, text: str, phrases: list[str]) -> None:
    path = tmp_path / "topology.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ImproperlyConfigured) as info:
        load_shard_map(path)
    message = str(info.value)
    assert message.startswith(f"Topology file {path}: "), message
    assert "Fix: " in message, message
    for phrase in phrases:
        assert phrase in message, message
    assert "s3cret" not in message


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nowhere.toml" if kind == "missing" else tmp_path
    with pytest.raises(ImproperlyConfigured) as info:
        load_shard_map(str(path))
    message = str(info.value)
    assert str(path) in message
    assert ("file not found" if kind == "missing" else "cannot read it") in message
    assert "run `python -m deploy.topology up` to create it, or set SHARDSVC_TOPOLOGY" in message


def test_the_example_file_loads_and_is_the_readmes_example() -> None:
    # The type check (deploy/test.sh) loads settings from it, and README.md shows it as the format.
    example = REPO / "deploy" / "topology.example.toml"
    shard_map = load_shard_map(example)
    assert tuple(s.alias for s in shard_map.servers()) == (
        "default", "default_replica_1", "shard_0", "shard_0_replica_1",
    )
    readme_block = (REPO / "README.md").read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    assert readme_block in example.read_text()
