"""Live updates of a thread: what a write publishes, and where.

Every committed change of a comment (created, edited, deleted, voted) is appended to the
thread's Redis stream (its history, for clients that reconnect: their Last-Event-ID is a stream
id) and published on the thread's channel, in one script so the two never disagree on order:
the write's own, which raises the thread's page mark in the same call (comments.cache).
Both names carry the tenant id and the thread id: a subscriber of one site's thread can only
ever be handed that channel's events (comments/live_hub.py dispatches by exact channel name).

Live updates are best effort: when Redis does not answer, the write still succeeds and readers
see the change on their next page load.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import RedisError

from comments.schemas import comment_out
from shards.tenancy import current_tenant

logger = logging.getLogger("shardsvc.live")

Kind = Literal["created", "edited", "deleted", "voted"]
CHANNEL_PREFIX = "shardsvc:live:"
# Events kept per thread for catching up, and for how long after the thread's last event.
HISTORY = 500
HISTORY_SECONDS = 3600
EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

def channel(tenant_id: int, thread_id: int) -> str:
    return f"{CHANNEL_PREFIX}{tenant_id}:{thread_id}"


def history_key(tenant_id: int, thread_id: int) -> str:
    return f"shardsvc:events:{tenant_id}:{thread_id}"


def event_json(kind: Kind, comment: dict[str, Any]) -> str:
    """The event as the widget reads it: the comment as the API's answers show it (ids as
    strings, times to the millisecond)."""
    return json.dumps({"type": kind, "comment": comment_out(comment)}, separators=(",", ":"))


@dataclass(frozen=True)
class Event:
    """One event of a thread, ready for Redis: where it is kept, where published, what it says."""

    history: str
    channel: str
    payload: str


def event(kind: Kind, comment: dict[str, Any]) -> Event:
    """The event of `comment` (service.comment_dict's shape) in the current tenant's thread."""
    entry = current_tenant()
    assert entry is not None, "writes only run with a tenant"
    thread_id = int(comment["thread_id"])
    return Event(history_key(entry.id, thread_id), channel(entry.id, thread_id),
                 event_json(kind, comment))


def not_published(exc: RedisError) -> None:
    logger.warning("live: event not published (%s): readers see it on reload", exc)
