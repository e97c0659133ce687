#!/usr/bin/env bash
# Start an MLflow tracking server in the foreground (a supervisor, `&`, or Ctrl-C manages it):
#
#   infra/mlflow-server.sh [extra `mlflow server` options]
#
# Backend store (runs, params, metrics, the model registry), the first that applies:
#   1. MLFLOW_BACKEND_STORE_URI, as given (postgresql://..., mysql://..., sqlite:///...);
#   2. a local PostgreSQL (infra/postgres-start.sh, database `mlflow`) when GANOPS_MLFLOW_BACKEND is
#      `postgres`, or `auto` and both PostgreSQL's server programs and a driver (psycopg, psycopg2) are
#      importable;
#   3. SQLite at $GANOPS_SERVICES_DIR/mlflow/mlflow.db.
# In `auto` a missing driver or server, or a PostgreSQL that fails to start, falls back to SQLite and says why.
#
# Artifacts are served by this server (--serve-artifacts): clients upload over HTTP and need no storage
# credentials. They are stored in MLFLOW_ARTIFACTS_DESTINATION: a directory, or s3://bucket/prefix with
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and MLFLOW_S3_ENDPOINT_URL for MinIO) in this server's
# environment and boto3 installed.
#
# Environment (defaults in brackets):
#   MLFLOW_HOST [127.0.0.1]  MLFLOW_PORT [5000]  MLFLOW_WORKERS [2]
#   MLFLOW_BACKEND_STORE_URI [see above]   GANOPS_MLFLOW_BACKEND [auto]: auto | postgres | sqlite
#   MLFLOW_ARTIFACTS_DESTINATION [$GANOPS_SERVICES_DIR/mlflow/artifacts]
#   GANOPS_SERVICES_DIR [<project>/.services]
#   MLFLOW_SERVER_ALLOWED_HOSTS: Host headers accepted (MLflow's default: localhost and private IPs)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION [false]: MLflow's job runner (GenAI scorers), unused by the pipeline
#   MLFLOW_AUTH [none]: `basic` serves MLflow's basic-auth app (needs `uv sync --extra auth`): users and
#     permissions in $GANOPS_SERVICES_DIR/mlflow/auth/, an `admin` user whose password is
#     MLFLOW_AUTH_ADMIN_PASSWORD or a generated one (auth/admin-password, mode 600), a CSRF secret
#     MLFLOW_FLASK_SERVER_SECRET_KEY or a generated one (auth/secret-key); what other users may do by
#     default: MLFLOW_AUTH_DEFAULT_PERMISSION [READ] (READ, EDIT, MANAGE or NO_PERMISSIONS).
#   and, for the local PostgreSQL, those of infra/postgres-start.sh.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
source "$here/lib.sh"

host=${MLFLOW_HOST:-127.0.0.1}
port=${MLFLOW_PORT:-5000}
workers=${MLFLOW_WORKERS:-2}
backend=${GANOPS_MLFLOW_BACKEND:-auto}
mlflow_dir=$(services_dir)/mlflow
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-$mlflow_dir/artifacts}
python=$(find_tool python)
# A process of its own that only MLflow's GenAI features use: off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

# The PostgreSQL driver SQLAlchemy will use: psycopg (3; SQLAlchemy 2.1's default), else psycopg2.
pg_driver() {
    local module
    for module in psycopg psycopg2; do
        if "$python" -c "import $module" 2>/dev/null; then
            printf '%s\n' "$module"
            return 0
        fi
    done
    return 1
}

# SQLAlchemy loads a URI's driver when it builds the engine, before it connects: a missing driver shows
# here, not as a traceback from the server. The URI travels in the environment (it may hold a password).
# Prints the error's last line and fails when the driver does not load.
driver_error() {
    local out
    out=$(STORE_URI=$1 "$python" -c 'import os, sqlalchemy; sqlalchemy.create_engine(os.environ["STORE_URI"])' 2>&1) &&
        return 0
    printf '%s\n' "${out##*$'\n'}"
    return 1
}

pg_server_present() {
    [[ -n ${GANOPS_PG_BIN:-} ]] || command -v initdb >/dev/null 2>&1 ||
        compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# Start the local PostgreSQL and set `store`; return non-zero (with the reason logged) if it cannot be used.
use_local_postgres() {
    local driver
    if ! driver=$(pg_driver); then
        log "PostgreSQL backend: no PostgreSQL driver is importable by $python (install psycopg[binary])"
        return 1
    fi
    if ! pg_server_present; then
        log "PostgreSQL backend: no PostgreSQL server programs (initdb, pg_ctl) found"
        return 1
    fi
    local line
    line=$("$here/postgres-start.sh" mlflow | tail -n 1) || {
        log "PostgreSQL backend: infra/postgres-start.sh failed"
        return 1
    }
    store="${line#export GANOPS_POSTGRES_URI=postgresql}/mlflow"
    store="postgresql+$driver$store"
}

# A secret kept in a file of mode 600 under the auth folder: the file's content, created once.
secret_file() {
    local file=$1
    if [[ ! -s $file ]]; then
        (umask 077 && "$python" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$file.tmp")
        mv "$file.tmp" "$file"
    fi
    cat "$file"
}

# MLflow's basic-auth app: its config file, the admin password and the CSRF key; sets `app_args`.
use_basic_auth() {
    "$python" -c 'import flask_wtf' 2>/dev/null ||
        die "MLFLOW_AUTH=basic needs MLflow's auth extra in $python: \`uv sync --extra auth\`"
    local auth_dir=$mlflow_dir/auth permission=${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
    case $permission in READ | EDIT | MANAGE | NO_PERMISSIONS) ;; *)
        die "MLFLOW_AUTH_DEFAULT_PERMISSION=$permission: use READ, EDIT, MANAGE or NO_PERMISSIONS" ;;
    esac
    mkdir -p "$auth_dir"
    chmod 700 "$auth_dir"
    export MLFLOW_AUTH_ADMIN_PASSWORD=${MLFLOW_AUTH_ADMIN_PASSWORD:-$(secret_file "$auth_dir/admin-password")}
    export MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(secret_file "$auth_dir/secret-key")}
    export MLFLOW_AUTH_CONFIG_PATH=$auth_dir/basic_auth.ini
    cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = $permission
database_uri = sqlite:///$auth_dir/users.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    app_args=(--app-name basic-auth)
    log "authentication: MLflow basic auth, user admin (password in $auth_dir/admin-password unless given)"
}

case $backend in auto | postgres | sqlite) ;; *) die "GANOPS_MLFLOW_BACKEND=$backend: use auto, postgres or sqlite" ;; esac
app_args=()
case ${MLFLOW_AUTH:-none} in
    none) ;;
    basic) use_basic_auth ;;
    *) die "MLFLOW_AUTH=$MLFLOW_AUTH: use none or basic" ;;
esac

if [[ -n ${MLFLOW_BACKEND_STORE_URI:-} ]]; then
    store=$MLFLOW_BACKEND_STORE_URI
    if [[ $store != sqlite:* ]] && ! error=$(driver_error "$store"); then
        die "MLFLOW_BACKEND_STORE_URI: its database driver does not load in $python: $error (PostgreSQL: install psycopg[binary])"
    fi
elif [[ $backend == postgres ]]; then
    use_local_postgres || die "GANOPS_MLFLOW_BACKEND=postgres, but PostgreSQL cannot be used (see above)"
elif [[ $backend == auto ]] && use_local_postgres; then
    :
else
    [[ $backend == auto ]] && log "falling back to SQLite"
    mkdir -p "$mlflow_dir"
    store="sqlite:///$mlflow_dir/mlflow.db"
fi
if [[ $artifacts != *://* ]]; then
    mkdir -p "$artifacts"
    artifacts=$(cd "$artifacts" && pwd)
fi
require_free_port "$host" "$port"

# The store URI may hold a password: hand it over in the environment (MLflow reads
# MLFLOW_BACKEND_STORE_URI itself), not on the command line that `ps` shows.
export MLFLOW_BACKEND_STORE_URI=$store
log "backend store: ${store//:\/\/*@/://***@}"
log "artifacts:     $artifacts"
printf 'export MLFLOW_TRACKING_URI=http://%s:%s\n' "$(client_host "$host")" "$port"
if [[ ${#app_args[@]} -gt 0 ]]; then
    # Clients authenticate with these (MLflow reads them); other users are created through its API or UI.
    printf 'export MLFLOW_TRACKING_USERNAME=admin\nexport MLFLOW_TRACKING_PASSWORD=%q\n' "$MLFLOW_AUTH_ADMIN_PASSWORD"
fi
exec "$python" -m mlflow server --host "$host" --port "$port" --workers "$workers" \
    --serve-artifacts --artifacts-destination "$artifacts" "${app_args[@]}" "$@"
