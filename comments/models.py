"""Sharded models of the comments service. A tenant is a site; all of this lives on its shard."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import MD5

from shards.sharded import ShardedModel

MAX_BODY = 10_000
MAX_URL = 2000
MAX_DEPTH = 8


class Thread(ShardedModel):
    """One page of a site, identified by its URL."""

    url = models.CharField(max_length=MAX_URL)
    title = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    # Denormalized so thread lists need no COUNT(*); kept by the same transaction as the write.
    comment_count = models.PositiveIntegerField(default=0)

    class Meta(ShardedModel.Meta):
        constraints = [
            *ShardedModel.Meta.constraints,
            # One thread per URL, enforced on a hash: a btree entry holds at most 2704 bytes, and
            # a URL the API accepts (MAX_URL characters of up to 4 UTF-8 bytes each) can exceed
            # it. Lookups filter on the same expression (and the URL itself), see
            # comments.service.threads_at.
            models.UniqueConstraint(models.F("tenant_id"), MD5("url"),
                                    name="comments_thread_url_md5_uniq"),
        ]


class Comment(ShardedModel):
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="comments")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="replies"
    )
    # The top-level comment of this reply's tree (None for top-level ones): a page of roots
    # fetches all their replies in one query, whatever the depth.
    root = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    author = models.CharField(max_length=150)  # the site's own user id
    author_name = models.CharField(max_length=150, blank=True, default="")
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    edited_at = models.DateTimeField(null=True, blank=True)
    # Soft delete: replies keep their place in the tree; the body is blanked.
    deleted = models.BooleanField(default=False)
    score = models.IntegerField(default=0)
    depth = models.PositiveSmallIntegerField(default=0)

    class Meta(ShardedModel.Meta):
        indexes = [
            # Pages sort by id (time-ordered) or by score then id.
            models.Index(fields=["tenant_id", "thread", "id"], name="comments_thread_newest"),
            models.Index(fields=["tenant_id", "thread", "score", "id"],
                         name="comments_thread_top"),
            models.Index(fields=["tenant_id", "root"], name="comments_root"),
        ]


class Vote(ShardedModel):
    """One user's vote on one comment: +1 or -1. Voting again replaces it."""

    comment = models.ForeignKey(Comment, on_delete=models.CASCADE, related_name="votes")
    voter = models.CharField(max_length=150)
    value = models.SmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(ShardedModel.Meta):
        constraints = [
            *ShardedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant_id", "comment", "voter"],
                                    name="comments_vote_once"),
            models.CheckConstraint(condition=models.Q(value__in=[-1, 1]),
                                   name="comments_vote_value"),
        ]
