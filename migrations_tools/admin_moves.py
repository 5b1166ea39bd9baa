"""The admin's online move: the tenant action's form and page, and the detached process that
runs `manage.py move_tenant` for the chosen tenants (output in a log next to the topology file).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from django import forms
from django.template import engines

from shards.aliases import CONTROL_ALIAS
from shards.models import Shard
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.admin")
PROJECT_DIR = Path(__file__).resolve().parent.parent


def open_shard_choices() -> list[tuple[str, str]]:
    closed = set(Shard.objects.using(CONTROL_ALIAS).filter(accepts_tenants=False)
                 .values_list("name", flat=True))
    return [(name, name) for name in get_shard_map().shard_names if name not in closed]


class MoveTargetForm(forms.Form):
    target = forms.ChoiceField(
        label="Target shard", choices=open_shard_choices,
        help_text="Shards closed to new tenants are not offered. The tenant keeps serving; "
                  "its writes pause briefly at the cutover.",
    )


_MOVE_FORM = """{% extends "admin/base_site.html" %}{% load admin_urls %}
{% block breadcrumbs %}<div class="breadcrumbs"><a href="{% url 'admin:index' %}">Home</a>
&rsaquo; <a href="{% url 'admin:app_list' app_label=opts.app_label %}">
{{ opts.app_config.verbose_name }}</a>
&rsaquo; <a href="{% url opts|admin_urlname:'changelist' %}">
{{ opts.verbose_name_plural|capfirst }}</a>
&rsaquo; Move to another shard</div>{% endblock %}
{% block content %}
<p>Move online, one after the other (each under the cluster lock): copy with logical
replication, catch up, fence and flip, verify, clean up. Follow them in
<a href="{{ jobs_url }}">move jobs</a>.</p>
<ul>{% for t in tenants %}<li>{{ t.slug }} (id {{ t.pk }}, on {{ t.shard }}, {{ t.state }})</li>
{% endfor %}</ul>
<form method="post">{% csrf_token %}
{{ form.as_p }}
{% for t in tenants %}<input type="hidden" name="{{ action_checkbox_name }}" value="{{ t.pk }}">
{% endfor %}<input type="hidden" name="action" value="{{ action }}">
<input type="hidden" name="apply" value="yes">
<input type="submit" value="Start the move">
<a href="{% url opts|admin_urlname:'changelist' %}" class="button cancel-link">Cancel</a>
</form>
{% endblock %}
"""


def move_form_template() -> Any:
    # An inline template: this page is the only one the shards admin adds.
    return engines["django"].from_string(_MOVE_FORM)


def move_log_dir() -> Path:
    """`moves/` next to the topology file, or a temporary folder if that is not writable."""
    for folder in (get_shard_map().source.parent / "moves",
                   Path(tempfile.gettempdir()) / "shardsvc-moves"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise OSError("no writable folder for the move log")


def launch_moves(tenants: list[tuple[int, str]], target: str, *,
                 reason: str) -> tuple[int, Path]:
    """Start `manage.py move_tenant <id> <target>` for each tenant, one after the other, in a
    detached process (its own session: it outlives this worker) with this process's
    environment; stdout and stderr go to a log file. Returns (pid, log path)."""
    name = tenants[0][1] if len(tenants) == 1 else f"{len(tenants)}-tenants"
    return launch_commands(
        [["move_tenant", str(tenant_id), target, "--reason", reason]
         for tenant_id, _slug in tenants],
        log_name=f"move-{name}-{target}", reason=reason)


def launch_commands(commands: list[list[str]], *, log_name: str,
                    reason: str) -> tuple[int, Path]:
    """Run `manage.py <command>` for each command, one after the other, detached as
    launch_moves describes. Returns (pid, log path)."""
    env = dict(os.environ)
    # A command must not write its metrics into the running service's multiprocess folder.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["SHARDSVC_TOPOLOGY"] = str(get_shard_map().source)
    env.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    argvs = [[sys.executable, str(PROJECT_DIR / "manage.py"), *command] for command in commands]
    if len(argvs) == 1:
        argv = argvs[0]
    else:  # sequential: every move takes the cluster lock
        argv = ["/bin/sh", "-c", " ; ".join(shlex.join(c) for c in argvs)]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    log = move_log_dir() / f"{log_name}-{stamp}-{os.getpid()}.log"
    with log.open("ab") as handle:
        handle.write(f"# {stamp} {reason}: {shlex.join(argv)}\n".encode())
        handle.flush()
        process = subprocess.Popen(
            argv, cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    # Reap it when it ends (no zombie while this worker lives); under gevent a greenlet.
    threading.Thread(target=process.wait, name=f"move-reaper-{process.pid}",
                     daemon=True).start()
    logger.info("started %s: pid %s, log %s", log_name, process.pid, log)
    return process.pid, log
