from corsheaders.signals import check_request_enabled
from django.apps import AppConfig
from django.db.models.signals import post_save


class SitesConfig(AppConfig):
    """Sites (the tenants of the comments service) and their API keys: control data."""

    name = "sites"
    label = "sites"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Models (sites.keys imports them too): importable only once the app registry is ready.
        from sites import cors, keys, public_keys
        from sites.models import Site

        post_save.connect(keys.forget, sender=Site, dispatch_uid="shardsvc.site_key_saved")
        post_save.connect(public_keys.forget, sender=Site,
                          dispatch_uid="shardsvc.site_public_key_saved")
        check_request_enabled.connect(cors.origin_allowed, dispatch_uid="shardsvc.site_cors")
