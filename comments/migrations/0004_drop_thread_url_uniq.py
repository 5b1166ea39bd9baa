"""Drop the unique constraint on (tenant_id, url): 0003's index on md5(url) enforces it now.
Dropping takes an ACCESS EXCLUSIVE lock for a moment only (no scan); an atomic migration, so a
lock timeout is retried."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("comments", "0003_thread_url_md5_uniq"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    sql='ALTER TABLE "comments_thread" '
                        'DROP CONSTRAINT IF EXISTS "comments_thread_url_uniq"',
                    reverse_sql='ALTER TABLE "comments_thread" ADD CONSTRAINT '
                                '"comments_thread_url_uniq" UNIQUE ("tenant_id", "url")',
                ),
            ],
            state_operations=[
                migrations.RemoveConstraint(model_name="thread", name="comments_thread_url_uniq"),
            ],
        ),
    ]
