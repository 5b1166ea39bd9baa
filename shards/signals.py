"""Signals the data layer sends for the layers above it to answer."""

from django.dispatch import Signal

# Sent with `alias` and `error` when a read on a replica failed, before the read is tried
# elsewhere (shards.sharded). Replica health lives in the routing layer above this one, which
# connects to it in its AppConfig.ready, so the retry's next choice skips the failed replica.
replica_read_failed = Signal()
