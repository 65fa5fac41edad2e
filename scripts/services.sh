#!/usr/bin/env bash
# Make this machine ready for dispatcher: Debian packages, PostgreSQL, RabbitMQ, the virtualenv.
# Idempotent and quick when everything is already there. Source it (it exports the URLs) or run it.
# The work runs in a subshell with its own `set -euo pipefail`, so sourcing it neither changes the
# caller's shell options nor exits the caller's shell on a failure (it returns 1 instead).
_dispatcher_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_dispatcher_services() (
  set -euo pipefail
  ROOT="$_dispatcher_root"

  say() { echo "services: $*" >&2; }
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

  # Local-development credential for the throwaway local cluster only; deployments set their own.
  DISPATCHER_DB_PASSWORD="${DISPATCHER_DB_PASSWORD:-dispatcher}"

  missing=()
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
  command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
  # promtool checks and unit-tests the alert rules in deploy/prometheus (tests/deploy).
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (apt)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi

  # PostgreSQL: first cluster listed by pg_lsclusters.
  read -r PG_VERSION PG_CLUSTER PG_PORT PG_STATUS _ < <(pg_lsclusters --no-header | head -n 1)
  if [ "$PG_STATUS" != "online" ]; then
    say "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start
  fi
  psql_admin() { as_root runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }
  for _ in $(seq 1 30); do psql_admin -c "SELECT 1" >/dev/null 2>&1 && break; sleep 1; done
  psql_admin -c "DO \$\$BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dispatcher') THEN
      CREATE ROLE dispatcher LOGIN CREATEDB PASSWORD '${DISPATCHER_DB_PASSWORD}';
    END IF;
  END\$\$;" >/dev/null
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'dispatcher'")" != "1" ]; then
    psql_admin -c "CREATE DATABASE dispatcher OWNER dispatcher" >/dev/null
  fi
  # Health data must not leak through DETAIL lines into the server log.
  if [ "$(psql_admin -c "SHOW log_error_verbosity")" != "terse" ]; then
    psql_admin -c "ALTER SYSTEM SET log_error_verbosity = 'terse'" -c "SELECT pg_reload_conf()" >/dev/null
  fi

  # RabbitMQ.
  rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
  if ! rabbit_up; then
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 90); do rabbit_up && break; sleep 1; done
    rabbit_up || { say "RabbitMQ did not start within 90 s (see /var/log/rabbitmq)"; exit 1; }
    as_root rabbitmqctl await_startup --timeout 60 >/dev/null 2>&1 || true
    # Tests and benches name their queues test.* and bench.*; the broker deletes any left
    # behind (a killed run) after an hour unused. Hundreds of leftover quorum queues once
    # hung a developer's node. Policies are stored by the node, so once per start is enough.
    as_root rabbitmqctl set_policy --apply-to queues leftover-test-queues '^(test|bench)\.' \
      '{"expires": 3600000}' >/dev/null 2>&1 || say "could not set the leftover-queue policy"
  fi

  # Virtualenv from pyproject.toml, rebuilt only when pyproject.toml changes.
  stamp="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -x "$ROOT/.venv/bin/python" ] || [ "$(cat "$ROOT/.venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "installing the virtualenv (.venv)"
    python3 -m venv "$ROOT/.venv"
    if ! { "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip &&
           "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT[test]"; } >"$ROOT/.venv/pip.log" 2>&1; then
      cat "$ROOT/.venv/pip.log" >&2
      say "pip install failed (log above)"
      exit 1
    fi
    echo "$stamp" > "$ROOT/.venv/.stamp"
  fi

)

# Not inside `if` or `||`: bash ignores `set -e` in a function called from a condition.
# Not inside `$(...)` either: the daemons it starts would hold the substitution's pipe open.
_dispatcher_services 1>&2
_dispatcher_rc=$?
unset -f _dispatcher_services
if [ "$_dispatcher_rc" -ne 0 ]; then
  echo "services: not ready (see above)" >&2
  # shellcheck disable=SC2317
  return 1 2>/dev/null || exit 1
fi
read -r _ _ _dispatcher_pg_port _ < <(pg_lsclusters --no-header | head -n 1)
DISPATCHER_DB_PASSWORD="${DISPATCHER_DB_PASSWORD:-dispatcher}"
export DISPATCHER_DATABASE_URL="${DISPATCHER_DATABASE_URL:-postgresql+asyncpg://dispatcher:${DISPATCHER_DB_PASSWORD}@127.0.0.1:${_dispatcher_pg_port}/dispatcher}"
export DISPATCHER_AMQP_URL="${DISPATCHER_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
echo "services: ready: PostgreSQL on port $_dispatcher_pg_port, RabbitMQ on 5672, .venv" >&2
