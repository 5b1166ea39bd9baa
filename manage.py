#!/usr/bin/env python
"""Django's command-line utility for this service."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # Settings errors (no secret key, a bad topology file) say what to fix; a traceback
        # through Django's setup adds nothing to that.
        sys.exit(f"Error: {exc}")
