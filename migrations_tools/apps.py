from django.apps import AppConfig


class MigrationsToolsConfig(AppConfig):
    """The DBA commands (migrate_shards, shard_showmigrations, check_shard_schema); no models."""

    name = "migrations_tools"
    label = "migrations_tools"
    verbose_name = "Migrations across shards"
