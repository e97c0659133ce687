#!/usr/bin/env bash
# Start a Prefect server (API, UI and its services: scheduler, late runs, ...) in the foreground:
#
#   infra/prefect-server.sh [extra `prefect server start` options, e.g. --no-ui]
#
# Its database is SQLite in PREFECT_HOME unless PREFECT_API_DATABASE_CONNECTION_URL names another, e.g.
# PostgreSQL: postgresql+asyncpg://USER:PASSWORD@HOST:PORT/prefect (infra/postgres-start.sh prefect
# starts a local one and creates the database).
#
# Environment (defaults in brackets):
#   PREFECT_SERVER_API_HOST [127.0.0.1]  PREFECT_SERVER_API_PORT [4200]
#   PREFECT_HOME [$GANOPS_SERVICES_DIR/prefect]   GANOPS_SERVICES_DIR [<project>/.services]
#   PREFECT_API_DATABASE_CONNECTION_URL [sqlite+aiosqlite:///$PREFECT_HOME/prefect.db]
#   PREFECT_SERVER_ANALYTICS_ENABLED [false]: no usage reports leave the machine unless set to true
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

host=${PREFECT_SERVER_API_HOST:-127.0.0.1}
port=${PREFECT_SERVER_API_PORT:-4200}
export PREFECT_HOME=${PREFECT_HOME:-$(services_dir)/prefect}
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
mkdir -p "$PREFECT_HOME"
prefect=$(find_tool prefect)
require_free_port "$host" "$port"

if [[ -n ${PREFECT_API_DATABASE_CONNECTION_URL:-} ]]; then
    log "database: ${PREFECT_API_DATABASE_CONNECTION_URL//:\/\/*@/://***@}"
else
    log "database: SQLite in $PREFECT_HOME"
fi
printf 'export PREFECT_API_URL=http://%s:%s/api\n' "$(client_host "$host")" "$port"
exec "$prefect" server start --host "$host" --port "$port" "$@"
