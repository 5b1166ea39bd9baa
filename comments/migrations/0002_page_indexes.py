"""Indexes that match how pages sort (by id, or by score then id), built without blocking
writes: CONCURRENTLY, outside a transaction."""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("comments", "0001_initial"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="comment",
            index=models.Index(fields=["tenant_id", "thread", "id"],
                               name="comments_thread_newest"),
        ),
        AddIndexConcurrently(
            model_name="comment",
            index=models.Index(fields=["tenant_id", "thread", "score", "id"],
                               name="comments_thread_top"),
        ),
        RemoveIndexConcurrently(model_name="comment", name="comments_thread_created"),
        RemoveIndexConcurrently(model_name="comment", name="comments_thread_score"),
    ]
