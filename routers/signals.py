"""Signals of the routing layer, in a module of their own: observers (project/metrics.py, which
logging loads before Django's apps) connect to them without importing the router or models."""

from django.dispatch import Signal

# Sent after every scatter call (routers.scatter): kind ("page", "aggregate", "call"), outcome
# ("complete", "partial", "failed") and the failures (routers.scatter.ShardFailure).
scatter_finished = Signal()
