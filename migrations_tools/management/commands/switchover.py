"""Planned switchover: `manage.py switchover <cluster> [--to <member>]`.

Hands a Patroni-managed cluster's leader role to another member (Patroni's choice unless --to),
waits until a write through PgBouncer succeeds on the new leader, and prints the write pause a
client saw (migrations_tools/switchover.py).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from migrations_tools.switchover import SwitchoverError, switchover
from shards.topology import get_shard_map


class Command(BaseCommand):
    help = ("Hand a cluster's leader role to another member through Patroni, wait until writes "
            "through PgBouncer succeed on it, and print the measured write pause.")

    # Reads the topology and talks to Patroni and PgBouncer: the API's checks are not needed.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        names = [c.name for c in get_shard_map().clusters]
        parser.add_argument("cluster", choices=names, help="the cluster (default or a shard)")
        parser.add_argument("--to", metavar="MEMBER",
                            help="the member to promote (default: Patroni chooses)")
        parser.add_argument("--timeout", type=float, default=60.0,
                            help="seconds to wait for the new leader to accept writes")
        parser.add_argument("--no-fence", dest="fence", action="store_false",
                            help="skip stopping and flushing writes on the leader first (a "
                            "COMMIT in flight at its shutdown then has an unknown outcome)")

    def handle(self, *args: Any, **options: Any) -> None:
        cluster = next(c for c in get_shard_map().clusters if c.name == options["cluster"])
        try:
            result = switchover(cluster, candidate=options["to"], timeout=options["timeout"],
                                fence=options["fence"])
        except SwitchoverError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{result.cluster}: {result.old_leader} -> {result.new_leader}; writes through "
            f"PgBouncer paused {result.pause:.2f} s ({result.failed_writes} probe write(s) "
            f"failed, done in {result.elapsed:.2f} s)")
