from django.apps import AppConfig


class CommentsConfig(AppConfig):
    """The product: sites' threads and comments. A sharded app: its tables live on shards."""

    name = "comments"
    label = "comments"
    default_auto_field = "django.db.models.BigAutoField"
