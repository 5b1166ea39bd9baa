"""The service's comment tables, read and written as any Django project would: unmanaged
models over the existing tables (the service's migrations made them)."""

from __future__ import annotations

from django.db import models


class NextId(models.Func):
    """The database's id default (the shard's id generator), as the tables define it."""

    function = "shardsvc_next_id"
    arity = 0
    output_field = models.BigIntegerField()


class Thread(models.Model):
    id = models.BigIntegerField(primary_key=True, db_default=NextId())
    tenant_id = models.BigIntegerField()
    url = models.CharField(max_length=2000)
    title = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)
    comment_count = models.PositiveIntegerField(default=0)

    class Meta:
        managed = False
        db_table = "comments_thread"


class Comment(models.Model):
    id = models.BigIntegerField(primary_key=True, db_default=NextId())
    tenant_id = models.BigIntegerField()
    thread = models.ForeignKey(Thread, on_delete=models.DO_NOTHING, related_name="+")
    parent = models.ForeignKey("self", null=True, on_delete=models.DO_NOTHING, related_name="+")
    root = models.ForeignKey("self", null=True, on_delete=models.DO_NOTHING, related_name="+")
    author = models.CharField(max_length=150)
    author_name = models.CharField(max_length=150)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    edited_at = models.DateTimeField(null=True)
    deleted = models.BooleanField(default=False)
    score = models.IntegerField(default=0)
    depth = models.PositiveSmallIntegerField(default=0)

    class Meta:
        managed = False
        db_table = "comments_comment"
