"""One thread per URL, enforced on md5(url) instead of the URL itself: a btree entry holds at
most 2704 bytes, and a URL the API accepts (2000 characters, up to 4 UTF-8 bytes each) can be
longer, which made such a PUT fail in the index.

Built CONCURRENTLY (writes go on; outside a transaction), as a unique index: the old constraint
keeps enforcing uniqueness until 0004 drops it. A failed build leaves an INVALID index behind;
dropping it first makes a rerun start clean.
"""

from django.db import migrations, models
from django.db.models.functions import MD5

INDEX = "comments_thread_url_md5_uniq"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("comments", "0002_page_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    sql=[
                        f'DROP INDEX CONCURRENTLY IF EXISTS "{INDEX}"',
                        f'CREATE UNIQUE INDEX CONCURRENTLY "{INDEX}" '
                        'ON "comments_thread" ("tenant_id", (MD5("url")))',
                    ],
                    reverse_sql=f'DROP INDEX CONCURRENTLY IF EXISTS "{INDEX}"',
                ),
            ],
            state_operations=[
                migrations.AddConstraint(
                    model_name="thread",
                    constraint=models.UniqueConstraint(
                        models.F("tenant_id"), MD5("url"), name=INDEX
                    ),
                ),
            ],
        ),
    ]
