"""Debian's prometheus-pgbouncer-exporter, made to read PgBouncer 1.8+'s SHOW STATS.

Debian 12 ships the exporter at 1.7, which reads SHOW STATS' `total_requests`: PgBouncer 1.8
split that column into `total_xact_count` and `total_query_count`, so against Debian's own
PgBouncer 1.18 the exporter dies at start with KeyError 'total_requests'. This runs the packaged
exporter (with Debian's python3, which has it) after giving its stats collector the new
columns; everything else, its options included, is the package's.

    python3 deploy/pgbouncer_exporter.py --port 9127 --pgbouncer-port 6432 ...
"""

from __future__ import annotations

import sys

from prometheus_pgbouncer_exporter import cli, collectors

collectors.StatsCollector.metrics = {
    "total_xact_count": ("transactions_total", "Transactions pooled by pgbouncer"),
    "total_query_count": ("queries_total", "SQL queries pooled by pgbouncer"),
    "total_received": ("received_bytes_total", "Network traffic received by pgbouncer"),
    "total_sent": ("sent_bytes_total", "Network traffic sent by pgbouncer"),
    "total_query_time": ("query_microseconds_total",
                         "Microseconds pgbouncer spent connected to PostgreSQL, querying"),
}

if __name__ == "__main__":
    sys.exit(cli.main())
