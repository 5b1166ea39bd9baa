#!/usr/bin/env bash
# Set up everything on a Debian 12 machine and run the service on a local topology.
#   bash deploy/setup.sh              # packages, virtualenv, topology, migrations, service
#   bash deploy/setup.sh --deps-only  # packages and virtualenv only (the test command uses this)
# Extra arguments go to `python -m deploy.topology up` (e.g. --shards 3 --base-port 16400).
set -euo pipefail
cd "$(dirname "$0")/.."

deps_only=0
if [ "${1:-}" = "--deps-only" ]; then deps_only=1; shift; fi

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)
# The browser tests drive Debian's chromium through Playwright (never a downloaded browser).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The highly available topology (the default): a 3-member etcd for Patroni (deploy/etcd.py).
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
# Monitoring (deploy/monitoring.py): Prometheus (with promtool, which the test command runs) and
# the exporters of PostgreSQL, PgBouncer, Redis and the host's disks; the ops dashboard's browser
# test drives Debian's chromium (never a downloaded browser).
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-postgres-exporter >/dev/null || need_apt+=(prometheus-postgres-exporter)
command -v prometheus-pgbouncer-exporter >/dev/null || need_apt+=(prometheus-pgbouncer-exporter)
command -v prometheus-redis-exporter >/dev/null || need_apt+=(prometheus-redis-exporter)
command -v prometheus-node-exporter >/dev/null || need_apt+=(prometheus-node-exporter)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need_apt[*]}; run this script as root or install them" >&2
    exit 1
  fi
  echo "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's packages start their own PostgreSQL/PgBouncer/Redis/nginx services on the standard ports;
# the project's topology uses its own ports and folder and never touches those.
export PATH="$PATH:/usr/sbin"
# The packaged etcd.service would run a single-member etcd on the standard ports: the topology
# starts its own three members instead, so keep the packaged one off.
if [ "$(id -u)" -eq 0 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now etcd.service >/dev/null 2>&1 || true
fi

# Patroni (pinned in pyproject.toml's `ha` extra) in a virtualenv of its own, made with the
# system Python: PostgreSQL's user runs it, and may not be able to enter the project's folder
# or its virtualenv's interpreter. SHARDSVC_PATRONI_VENV moves it (deploy/patroni.py reads it too).
patroni_venv=${SHARDSVC_PATRONI_VENV:-/opt/shardsvc-patroni}
patroni_pin=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["ha"][0])')
if [ "$(id -u)" -eq 0 ] || [ -w "$(dirname "$patroni_venv")" ]; then
  if ! "$patroni_venv/bin/pip" show patroni 2>/dev/null | grep -qx "Version: ${patroni_pin##*==}"; then
    [ -x "$patroni_venv/bin/python" ] || /usr/bin/python3 -m venv "$patroni_venv"
    "$patroni_venv/bin/pip" install --quiet "$patroni_pin"
  fi
else
  echo "cannot create $patroni_venv (Patroni for the default topology); run as root, set" \
       "SHARDSVC_PATRONI_VENV to a writable folder, or start the topology with --plain" >&2
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.deps-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[dev]'
  rm -f .venv/.deps-* && touch "$stamp"
fi

if [ "$deps_only" = 1 ]; then exit 0; fi

.venv/bin/python -m deploy.topology up "$@"
.venv/bin/python -m deploy.topology demo "$@"
echo
echo "nginx serves it on base port + 3 (http://127.0.0.1:15403/ by default); each app host"
echo "listens on base port + 2 (the table above)."
echo "Stop it with: .venv/bin/python -m deploy.topology down"
