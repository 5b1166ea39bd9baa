"""The PostgreSQL servers of the local topology: create, configure, start, stop, inspect.

Each primary gets its own initdb; each replica is a pg_basebackup of its primary, streaming.
As root both run as the service user (PostgreSQL refuses root).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg

from deploy import processes as proc
from deploy.layout import ADMIN_USER, APP_DB, APP_USER, LocalLayout, Node, pg_bin
from deploy.processes import TopologyError
from shards import pg
from shards.lsn import current_lsn, format_lsn


class PostgresNodes:
    """The servers of one LocalLayout; LocalTopology adds the rest of the topology to it."""

    def __init__(self, layout: LocalLayout, *, echo: Callable[[str], None] = print) -> None:
        self.layout = layout
        self.echo = echo

    def _ensure_primary(self, node: Node) -> None:
        if not (node.datadir / "PG_VERSION").exists():
            self.echo(f"[{node.alias}] creating primary on port {node.port}")
            self._init_datadir(node)
        self._write_server_conf(node)
        self._start_postgres(node)
        self._provision(node)

    def _init_datadir(self, node: Node) -> None:
        # One initdb per primary (not a copy of one): every cluster then has its own system
        # identifier, which logical replication puts in its table-sync slot names.
        proc.make_dir(node.datadir.parent, service_owned=True)
        proc.run(
            proc.as_service_user(
                [
                    pg_bin("initdb"),
                    "-D", str(node.datadir),
                    "-U", ADMIN_USER,
                    "--auth=trust",
                    "-E", "UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            ),
            what=f"initdb for {node.alias}",
        )
        conf = node.datadir / "postgresql.conf"
        self._append_as_service_user(conf, "\ninclude_if_exists = 'shardsvc.conf'\n")
        hba = (
            "# Local topology: trust on loopback only; never expose these ports.\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        self._write_as_service_user(node.datadir / "pg_hba.conf", hba)

    def _write_server_conf(self, node: Node) -> None:
        settings = {
            "port": str(node.port),
            "listen_addresses": "'127.0.0.1'",
            # Socket paths are limited to 107 bytes; TCP on loopback only avoids deep folders.
            "unix_socket_directories": "''",
            "cluster_name": f"'{node.alias}'",
            **self.pg_parameters(),
        }
        text = "# Written by deploy/topology.py on every `up`; edit the layout, not this file.\n"
        text += "".join(f"{key} = {value}\n" for key, value in settings.items())
        self._write_as_service_user(node.datadir / "shardsvc.conf", text)

    def pg_parameters(self) -> dict[str, str]:
        """The settings every server of the topology shares (under Patroni: the cluster's
        parameters in etcd)."""
        settings = {
            "max_connections": "300",
            "shared_buffers": "32MB",
            # Tenant moves use logical replication: slots, senders and apply workers.
            "wal_level": "logical",
            "max_wal_senders": "20",
            "max_replication_slots": "20",
            "max_worker_processes": "16",
            "max_logical_replication_workers": "8",
            "wal_keep_size": "256MB",
            # Last guard against a leaked replication slot holding WAL forever.
            "max_slot_wal_keep_size": "4GB",
            # A new subscription's apply worker starts this long after the last one was
            # dropped (5 s by default): back-to-back moves wait for it.
            "wal_retrieve_retry_interval": "'1s'",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        if not self.layout.durable:
            settings.update(fsync="off")
            if not self.layout.ha:
                # Under Patroni commits stay synchronous (no acknowledged write lost to a
                # failover) and full pages are written (pg_rewind needs them).
                settings.update(synchronous_commit="off", full_page_writes="off")
        for key, value in self.layout.pg_settings.items():
            settings[key] = value
        return settings

    def _write_as_service_user(self, path: Path, text: str) -> None:
        path.write_text(text)
        proc.chown_to_service_user(path)

    def _append_as_service_user(self, path: Path, text: str) -> None:
        with path.open("a") as handle:
            handle.write(text)

    def postgres_running(self, node: Node) -> bool:
        if not (node.datadir / "PG_VERSION").exists():
            return False
        status = subprocess.run(
            proc.as_service_user([pg_bin("pg_ctl"), "status", "-D", str(node.datadir)]),
            capture_output=True,
            check=False,
        )
        return status.returncode == 0

    def _start_postgres(self, node: Node) -> None:
        if self.postgres_running(node):
            return
        proc.require_free_port(node.port, f"PostgreSQL {node.alias}")
        proc.run(
            proc.as_service_user(
                [
                    pg_bin("pg_ctl"),
                    "start",
                    "-D", str(node.datadir),
                    "-l", str(node.log),
                    "-w",
                    "-t", "60",
                ]
            ),
            what=f"starting PostgreSQL {node.alias} on port {node.port}",
            log=node.log,
        )

    def _provision(self, node: Node) -> None:
        """The application role and database on a primary (replicas inherit them)."""
        with self.admin_connect(node, dbname="postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_USER]).fetchone():
                # pg_monitor: the service reads replay positions and pg_stat_activity.
                conn.execute(f'CREATE ROLE "{APP_USER}" LOGIN IN ROLE pg_monitor')
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [APP_DB]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{APP_DB}" OWNER "{APP_USER}"')

    def _ensure_replica(self, node: Node) -> None:
        if not (node.datadir / "PG_VERSION").exists():
            self.echo(f"[{node.alias}] cloning a streaming replica of port {node.primary_port}")
            shutil.rmtree(node.datadir, ignore_errors=True)
            proc.make_dir(node.datadir.parent, service_owned=True)
            proc.run(
                proc.as_service_user(
                    [
                        pg_bin("pg_basebackup"),
                        "-D", str(node.datadir),
                        "-d",
                        f"host=127.0.0.1 port={node.primary_port} user={ADMIN_USER} "
                        f"application_name={node.alias}",
                        "-X", "stream",
                        "-R",
                        "--checkpoint=fast",
                        "--no-sync",
                    ]
                ),
                what=f"pg_basebackup for {node.alias}",
            )
        self._write_server_conf(node)
        self._start_postgres(node)

    def admin_connect(self, node: Node, *, dbname: str = APP_DB) -> psycopg.Connection:
        return pg.connect(f"host=127.0.0.1 port={node.port} user={ADMIN_USER} dbname={dbname}")

    def _replication_detail(self, node: Node, primaries_lsn: dict[str, int]) -> str:
        with self.admin_connect(node) as conn:
            if node.role == "primary":
                wal = current_lsn(conn)
                primaries_lsn[node.cluster] = wal
                senders = pg.fetch_value(conn, "SELECT count(*) FROM pg_stat_replication")
                return f"primary, {senders} streaming replica(s), wal {format_lsn(wal)}"
            replay, delay = pg.fetch_row(
                conn,
                "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn, "
                "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
                "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END",
            )
            if replay is None:
                return f"replica, nothing replayed yet, lag {float(delay or 0):.2f} s"
            behind = ""
            if node.cluster in primaries_lsn:
                behind = f", {max(primaries_lsn[node.cluster] - int(replay), 0)} bytes behind"
            return (f"replica, replay {format_lsn(int(replay))}, "
                    f"lag {float(delay or 0):.2f} s{behind}")

    def stop_all_postgres(self) -> None:
        # Replicas first, so primaries do not wait on walsenders of replicas shutting down.
        for node in sorted(self.layout.nodes(), key=lambda n: n.role != "replica"):
            if self.postgres_running(node):
                proc.run(
                    proc.as_service_user(
                        [pg_bin("pg_ctl"), "stop", "-D", str(node.datadir), "-m", "fast",
                         "-w", "-t", "60"]
                    ),
                    what=f"stopping {node.alias}",
                    log=node.log,
                )
                self.echo(f"stopped postgres {node.alias}")


    def stop_node(self, alias: str, mode: str = "fast") -> None:
        node = self.node(alias)
        self._refuse_under_patroni("stop_member or kill_postmaster")
        proc.run(
            proc.as_service_user(
                [pg_bin("pg_ctl"), "stop", "-D", str(node.datadir), "-m", mode, "-w"]
            ),
            what=f"stopping {alias}",
            log=node.log,
        )

    def start_node(self, alias: str) -> None:
        self._refuse_under_patroni("start_member")
        self._start_postgres(self.node(alias))

    def _refuse_under_patroni(self, instead: str) -> None:
        # Patroni starts and stops its servers itself: a pg_ctl beside it races it (a stopped
        # leader is restarted or failed over, a started one is a second postmaster).
        if self.layout.ha:
            raise TopologyError(f"under Patroni, stop and start members through it ({instead})")

    def node(self, alias: str) -> Node:
        for node in self.layout.nodes():
            if node.alias == alias:
                return node
        known = ", ".join(n.alias for n in self.layout.nodes())
        raise TopologyError(f"no server {alias!r} in this topology; known: {known}")
