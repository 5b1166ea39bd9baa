"""Sharded models of the comments service. A tenant is a site; all of this lives on its shard."""

from __future__ import annotations

from django.db import models

from shards.sharded import ShardedModel


class Thread(ShardedModel):
    """One page of a site, identified by its URL."""

    url = models.CharField(max_length=2000)
    title = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(ShardedModel.Meta):
        constraints = [
            *ShardedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant_id", "url"], name="comments_thread_url_uniq"),
        ]


class Comment(ShardedModel):
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="comments")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="replies"
    )
    author = models.CharField(max_length=150)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(ShardedModel.Meta):
        indexes = [models.Index(fields=["tenant_id", "thread", "created_at"],
                                name="comments_thread_created")]
