from django.apps import AppConfig
from django.db.models.signals import post_migrate, post_save, pre_migrate

from shards import directory, preparation


class ShardsConfig(AppConfig):
    name = "shards"
    label = "shards"
    verbose_name = "Shards and tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Models: importable only once the app registry is ready.
        from shards.models import Tenant

        pre_migrate.connect(preparation.before_migrate, sender=self,
                            dispatch_uid="shardsvc.before_migrate")
        post_migrate.connect(preparation.after_migrate, sender=self,
                             dispatch_uid="shardsvc.after_migrate")
        post_save.connect(directory.on_tenant_saved, sender=Tenant,
                          dispatch_uid="shardsvc.tenant_saved")
        preparation.check_sharded_apps()
