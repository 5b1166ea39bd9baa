"""A site is a tenant of the comments service. Its row lives on control; its data on a shard."""

from __future__ import annotations

import hashlib
import secrets

from django.db import models

from shards.models import Tenant

KEY_PREFIX = "sk_"
# Publishable keys go into web pages: they are public by design, so they are stored as they are.
PUBLIC_KEY_PREFIX = "pk_"


def hash_key(raw: str) -> str:
    # Keys are 256 random bits: a fast hash is enough, no password-style stretching needed.
    return hashlib.sha256(raw.encode()).hexdigest()


class Site(models.Model):
    tenant = models.OneToOneField(Tenant, primary_key=True, on_delete=models.CASCADE,
                                  related_name="site")
    name = models.CharField(max_length=200)
    api_key_hash = models.CharField(max_length=64, editable=False, unique=True)
    # The first characters of the key, to recognise it in the admin; never enough to use it.
    api_key_hint = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Bumped by every key rotation. User tokens carry the generation they were issued under, so
    # rotating the key (e.g. after a leak) also revokes every user token issued before.
    key_generation = models.PositiveIntegerField(default=1, db_default=1, editable=False)
    # The publishable key (sites/public_keys.py): embedded in the site's pages by the widget, so
    # good only for reading and for writing as an end user the site's backend signed, and only
    # from a browser page of one of `allowed_origins` (e.g. "https://blog.example").
    public_key = models.CharField(max_length=64, unique=True, null=True, editable=False)
    allowed_origins = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["tenant__slug"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def new_key() -> str:
        return KEY_PREFIX + secrets.token_urlsafe(32)

    @staticmethod
    def new_public_key() -> str:
        return PUBLIC_KEY_PREFIX + secrets.token_urlsafe(18)

    def set_key(self, raw: str) -> None:
        if self.api_key_hash:  # a rotation, not the site's first key
            self.key_generation += 1
        self._previous_hash = self.api_key_hash
        self.api_key_hash = hash_key(raw)
        self.api_key_hint = raw[:10]

