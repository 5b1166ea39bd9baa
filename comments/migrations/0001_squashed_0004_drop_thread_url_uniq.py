"""The comments schema as 0001-0004 leave it, for a shard that has none of them yet.

A new shard has no readers or writers, so what 0002-0004 do to keep a live table writable (build
indexes CONCURRENTLY outside a transaction, keep the old unique constraint until the new index
exists) buys it nothing: here every table, index and constraint is created in one transaction,
one commit, and the indexes 0001 made and 0002 dropped are never built. A shard that has some of
0001-0004 applied goes on with those (Django uses a squashed migration only where none or all of
what it replaces is applied). Each object has the name and definition 0001-0004 give it, so a
shard migrated either way has the same schema (`check_shard_schema` compares them).
"""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models.functions import MD5

import shards.global_ids


def global_id() -> models.BigIntegerField:
    return models.BigIntegerField(db_default=shards.global_ids.NextGlobalId(), editable=False,
                                  primary_key=True, serialize=False)


class Migration(migrations.Migration):
    initial = True

    replaces = [
        ("comments", "0001_initial"),
        ("comments", "0002_page_indexes"),
        ("comments", "0003_thread_url_md5_uniq"),
        ("comments", "0004_drop_thread_url_uniq"),
    ]

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Thread",
            fields=[
                ("id", global_id()),
                ("tenant_id", models.BigIntegerField(editable=False)),
                ("url", models.CharField(max_length=2000)),
                ("title", models.CharField(blank=True, default="", max_length=300)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("comment_count", models.PositiveIntegerField(default=0)),
            ],
            options={
                "abstract": False,
                "constraints": [
                    models.UniqueConstraint(fields=("tenant_id", "id"),
                                            name="comments_thread_tenant_uniq"),
                    models.UniqueConstraint(models.F("tenant_id"), MD5("url"),
                                            name="comments_thread_url_md5_uniq"),
                ],
            },
        ),
        migrations.CreateModel(
            name="Comment",
            fields=[
                ("id", global_id()),
                ("tenant_id", models.BigIntegerField(editable=False)),
                ("author", models.CharField(max_length=150)),
                ("author_name", models.CharField(blank=True, default="", max_length=150)),
                ("body", models.TextField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("edited_at", models.DateTimeField(blank=True, null=True)),
                ("deleted", models.BooleanField(default=False)),
                ("score", models.IntegerField(default=0)),
                ("depth", models.PositiveSmallIntegerField(default=0)),
                ("parent", models.ForeignKey(blank=True, null=True,
                                             on_delete=django.db.models.deletion.CASCADE,
                                             related_name="replies", to="comments.comment")),
                ("root", models.ForeignKey(blank=True, null=True,
                                           on_delete=django.db.models.deletion.CASCADE,
                                           related_name="+", to="comments.comment")),
                ("thread", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                             related_name="comments", to="comments.thread")),
            ],
            options={
                "abstract": False,
                "indexes": [
                    models.Index(fields=["tenant_id", "root"], name="comments_root"),
                    models.Index(fields=["tenant_id", "thread", "id"],
                                 name="comments_thread_newest"),
                    models.Index(fields=["tenant_id", "thread", "score", "id"],
                                 name="comments_thread_top"),
                ],
                "constraints": [
                    models.UniqueConstraint(fields=("tenant_id", "id"),
                                            name="comments_comment_tenant_uniq"),
                ],
            },
        ),
        migrations.CreateModel(
            name="Vote",
            fields=[
                ("id", global_id()),
                ("tenant_id", models.BigIntegerField(editable=False)),
                ("voter", models.CharField(max_length=150)),
                ("value", models.SmallIntegerField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("comment", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                              related_name="votes", to="comments.comment")),
            ],
            options={
                "abstract": False,
                "constraints": [
                    models.UniqueConstraint(fields=("tenant_id", "id"),
                                            name="comments_vote_tenant_uniq"),
                    models.UniqueConstraint(fields=("tenant_id", "comment", "voter"),
                                            name="comments_vote_once"),
                    models.CheckConstraint(condition=models.Q(("value__in", [-1, 1])),
                                           name="comments_vote_value"),
                ],
            },
        ),
    ]
