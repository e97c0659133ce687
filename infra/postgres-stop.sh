#!/usr/bin/env bash
# Stop the local PostgreSQL that infra/postgres-start.sh started (fast shutdown: open sessions are
# closed, committed data is kept). Nothing to do when it is not running.
#
# Environment: GANOPS_SERVICES_DIR [<project>/.services], GANOPS_PG_BIN, GANOPS_POSTGRES_OS_USER [postgres]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

data=${GANOPS_SERVICES_DIR:-$PROJECT_ROOT/.services}/postgres/data
if [[ ! -f $data/postmaster.pid ]]; then
    log "no PostgreSQL running in $data"
    exit 0
fi
if [[ -n ${GANOPS_PG_BIN:-} ]]; then
    pg_ctl=$GANOPS_PG_BIN/pg_ctl
elif command -v pg_ctl >/dev/null 2>&1; then
    pg_ctl=$(command -v pg_ctl)
else
    pg_ctl=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/pg_ctl' | sort -V | tail -n 1)
fi
if ((EUID == 0)); then
    runuser -u "${GANOPS_POSTGRES_OS_USER:-postgres}" -- "$pg_ctl" -D "$data" -m fast -w stop >&2
else
    "$pg_ctl" -D "$data" -m fast -w stop >&2
fi
