"""The topology file -> a ShardMap, every mistake reported with its place and its fix.

Aliases are derived, never written in the file: ``default``, ``default_replica_1``, ...,
``shard_0``, ``shard_0_replica_1``, ... so adding a shard is a file edit plus a reload.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from psycopg.conninfo import conninfo_to_dict

from shards.aliases import CONTROL_ALIAS, REPLICA_INFIX
from shards.shardmap import Cluster, Server, ShardMap

SHARD_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

_CREATE_FIX = (
    "run `python -m deploy.topology up` to create it, "
    "or set SHARDSVC_TOPOLOGY to the path of an existing topology file"
)
_DSN_EXAMPLE = '"postgresql://user@host:port/dbname"'
_KEY_FIX = {
    "dsn": f"add dsn = {_DSN_EXAMPLE} (the pooled DSN the app uses, through PgBouncer)",
    "direct_dsn": f"add direct_dsn = {_DSN_EXAMPLE} (the direct DSN for DDL and replication)",
    "name": 'add name = "shard_N"',
    "url": 'add url = "redis://host:port/0"',
}
_PATRONI_FIX = (
    'write patroni = ["http://host:8008", ...]: the REST API of every member of the cluster '
    "(optional: only Patroni-managed clusters have it)"
)
# [edge] and [[app_hosts]] describe nginx and the hosts behind it: read by the deploy tools
# (deploy/edge.py), not by the service, which only needs to accept them.
_TOP_KEYS = ("control", "shards", "redis", "edge", "app_hosts")
_CONTROL_KEYS = ("dsn", "direct_dsn", "replicas", "patroni")
_SHARD_KEYS = ("name", "dsn", "direct_dsn", "replicas", "patroni")
_REPLICA_KEYS = ("dsn", "direct_dsn")
_REDIS_KEYS = ("url",)
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def load_shard_map(path: str | Path) -> ShardMap:
    """Read and check the topology file; raise ImproperlyConfigured naming place and fix."""
    return _Loader(Path(path).absolute()).load()


class _Loader:
    def __init__(self, source: Path) -> None:
        self.source = source

    def error(self, place: str, problem: str, fix: str) -> ImproperlyConfigured:
        where = f"{place}: " if place else ""
        return ImproperlyConfigured(f"Topology file {self.source}: {where}{problem}. Fix: {fix}.")

    def load(self) -> ShardMap:
        doc = self.read()
        self.check_keys(doc, _TOP_KEYS, "top level")
        if "control" not in doc:
            raise self.error(
                "top level",
                "no [control] table",
                f"add a [control] table with dsn = {_DSN_EXAMPLE} and direct_dsn = ...",
            )
        control_raw = self.table(doc["control"], "[control]")
        self.check_keys(control_raw, _CONTROL_KEYS, "[control]")
        control = self.cluster(control_raw, "[control]", CONTROL_ALIAS)
        shards_raw = doc.get("shards", [])
        if not isinstance(shards_raw, list) or not all(isinstance(s, dict) for s in shards_raw):
            raise self.error(
                "shards",
                f"must be an array of tables, got {_toml_type(shards_raw)}",
                "write each shard as its own [[shards]] table",
            )
        if not shards_raw:
            raise self.error(
                "top level",
                "no shards",
                "add at least one [[shards]] table with name, dsn and direct_dsn",
            )
        shards: list[Cluster] = []
        seen: dict[str, str] = {}
        for number, raw in enumerate(shards_raw, 1):
            place = f"[[shards]] #{number}"
            self.check_keys(raw, _SHARD_KEYS, place)
            name = self.shard_name(raw, place)
            place = f'{place} (name = "{name}")'
            if name in seen:
                raise self.error(
                    place,
                    f"duplicate shard name, also used by {seen[name]}",
                    "give every shard a unique name",
                )
            seen[name] = place
            shards.append(self.cluster(raw, place, name))
        redis = self.table(
            doc.get("redis"),
            "[redis]",
            missing='add a [redis] table with url = "redis://host:port/0"',
        )
        return ShardMap(
            control=control,
            shards=tuple(shards),
            redis_url=self.redis_url(redis),
            source=self.source,
        )

    def read(self) -> dict[str, Any]:
        try:
            with self.source.open("rb") as f:
                return tomllib.load(f)
        except FileNotFoundError:
            raise self.error("", "file not found", _CREATE_FIX) from None
        except OSError as e:
            raise self.error("", f"cannot read it ({e.strerror})", _CREATE_FIX) from e
        except UnicodeDecodeError as e:
            raise self.error("", f"not UTF-8 ({e.reason})", "save the file as UTF-8") from e
        except tomllib.TOMLDecodeError as e:
            # tomllib's message carries "(at line L, column C)".
            raise self.error("", f"invalid TOML: {e}", "correct the syntax at that line") from e

    def table(self, value: object, place: str, *, missing: str | None = None) -> dict[str, Any]:
        if value is None and missing is not None:
            raise self.error("top level", f"no {place} table", missing)
        if not isinstance(value, dict):
            raise self.error(
                place,
                f"must be a table, got {_toml_type(value)}",
                f"write it as a {place} table of key = value lines",
            )
        return value

    def check_keys(self, table: dict[str, Any], allowed: tuple[str, ...], place: str) -> None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise self.error(
                place,
                f"unknown key(s) {', '.join(unknown)}",
                f"check the spelling; allowed keys here are {', '.join(allowed)}",
            )

    def string(self, table: dict[str, Any], key: str, place: str) -> str:
        if key not in table:
            raise self.error(place, f"missing {key}", _KEY_FIX[key])
        value = table[key]
        if not isinstance(value, str) or not value:
            raise self.error(
                place, f"{key} must be a non-empty string, got {_toml_type(value)}", _KEY_FIX[key]
            )
        return value

    def shard_name(self, raw: dict[str, Any], place: str) -> str:
        name = self.string(raw, "name", place)
        if not SHARD_NAME_RE.match(name):
            raise self.error(
                place,
                f'invalid shard name "{name}"',
                "use 1-40 characters: a lowercase letter, then lowercase letters, digits or "
                "underscores (e.g. shard_0)",
            )
        if name == CONTROL_ALIAS:
            raise self.error(
                place, f'shard name "{name}" is the control database\'s alias', "pick another name"
            )
        if REPLICA_INFIX in name:
            raise self.error(
                place,
                f'shard name "{name}" contains "{REPLICA_INFIX}"',
                f"pick a name without it: replica aliases are derived as <name>{REPLICA_INFIX}N",
            )
        return name

    def dsn(self, table: dict[str, Any], key: str, place: str) -> str:
        dsn = self.string(table, key, place)
        # Never echo the DSN itself: it may carry a password.
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as e:
            raise self.error(
                place,
                f"{key} does not parse as a PostgreSQL DSN ({str(e).strip()})",
                f"write it as {_DSN_EXAMPLE} or as key=value pairs (host=... dbname=...)",
            ) from e
        for part in ("host", "dbname"):
            if not params.get(part):
                raise self.error(
                    place,
                    f"{key} has no {part}",
                    f"name it in the DSN, e.g. {_DSN_EXAMPLE}; "
                    "the topology file does not fall back to PG* environment variables",
                )
        # A multi-host DSN (host=a,b port=1,2 target_session_attrs=read-write) reaches whichever
        # member of a Patroni cluster leads: one port per host.
        port = params.get("port")
        if port and not all(part.isdigit() for part in str(port).split(",")):
            raise self.error(
                place, f"{key} has a port that is not a number",
                "write the port as digits (a comma-separated list for several hosts)",
            )
        return dsn

    def patroni(self, raw: dict[str, Any], place: str) -> tuple[str, ...]:
        urls = raw.get("patroni", [])
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise self.error(place, f"patroni must be an array of strings, got "
                                    f"{_toml_type(urls)}", _PATRONI_FIX)
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise self.error(place, f"patroni URL {bad[0]!r} is not http(s)", _PATRONI_FIX)
        return tuple(urls)

    def cluster(self, raw: dict[str, Any], place: str, name: str) -> Cluster:
        replicas_raw = raw.get("replicas", [])
        replicas_place = "[[control.replicas]]" if name == CONTROL_ALIAS else "[[shards.replicas]]"
        if not isinstance(replicas_raw, list) or not all(isinstance(r, dict) for r in replicas_raw):
            raise self.error(
                f"{place} replicas",
                f"must be an array of tables, got {_toml_type(replicas_raw)}",
                f"write each replica as its own {replicas_place} table",
            )
        primary = Server(
            alias=name,
            dsn=self.dsn(raw, "dsn", place),
            direct_dsn=self.dsn(raw, "direct_dsn", place),
            role="primary",
        )
        replicas = []
        for number, replica in enumerate(replicas_raw, 1):
            where = f"{replicas_place} #{number} of {place}"
            self.check_keys(replica, _REPLICA_KEYS, where)
            replicas.append(
                Server(
                    alias=f"{name}{REPLICA_INFIX}{number}",
                    dsn=self.dsn(replica, "dsn", where),
                    direct_dsn=self.dsn(replica, "direct_dsn", where),
                    role="replica",
                )
            )
        return Cluster(name=name, primary=primary, replicas=tuple(replicas),
                       patroni=self.patroni(raw, place))

    def redis_url(self, redis: dict[str, Any]) -> str:
        self.check_keys(redis, _REDIS_KEYS, "[redis]")
        url = self.string(redis, "url", "[redis]")
        if not url.startswith(_REDIS_SCHEMES):
            raise self.error(
                "[redis]", f"url must start with {', '.join(_REDIS_SCHEMES)}", _KEY_FIX["url"]
            )
        return url


def _toml_type(value: object) -> str:
    names = {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        dict: "a table",
        list: "an array",
    }
    return names.get(type(value), type(value).__name__)
