#!/usr/bin/env bash
# Start a local PostgreSQL for the services (MLflow's backend store; Prefect's database if wanted) and
# create the databases named as arguments:
#
#   infra/postgres-start.sh mlflow prefect
#
# The cluster is initialised once under $GANOPS_SERVICES_DIR/postgres (superuser `postgres`, a random
# password kept in postgres/password, mode 600; password authentication only, TCP only, no Unix socket),
# then started detached from this shell: it outlives this script and the servers that use it. Stop it
# with infra/postgres-stop.sh. Running it again is harmless: an initialised cluster is reused, a running
# one left running, existing databases kept.
#
# Prints on stdout the line to export (everything else goes to stderr):
#   export GANOPS_POSTGRES_URI=postgresql://postgres:PASSWORD@HOST:PORT
#
# Environment (defaults in brackets):
#   GANOPS_SERVICES_DIR     [<project>/.services]  state directory
#   GANOPS_POSTGRES_HOST    [127.0.0.1]            listen address
#   GANOPS_POSTGRES_PORT    [5432]                 port
#   GANOPS_PG_BIN           [directory of pg_ctl on PATH, else the newest /usr/lib/postgresql/*/bin]
#   GANOPS_POSTGRES_OS_USER [postgres]             run as this user when started as root (initdb refuses root)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

find_pg_bin() {
    if [[ -n ${GANOPS_PG_BIN:-} ]]; then
        printf '%s\n' "$GANOPS_PG_BIN"
    elif command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
    else
        local newest
        newest=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/pg_ctl' 2>/dev/null | sort -V | tail -n 1)
        [[ -n $newest ]] || die "no PostgreSQL server found (pg_ctl, initdb): install it (apt-get install postgresql) or set GANOPS_PG_BIN"
        dirname "$newest"
    fi
}

pg_bin=$(find_pg_bin)
for tool in initdb pg_ctl psql; do
    [[ -x $pg_bin/$tool ]] || die "$pg_bin/$tool not found (set GANOPS_PG_BIN to PostgreSQL's bin directory)"
done
host=${GANOPS_POSTGRES_HOST:-127.0.0.1}
port=${GANOPS_POSTGRES_PORT:-5432}
os_user=${GANOPS_POSTGRES_OS_USER:-postgres}
pg_dir=$(services_dir)/postgres
data=$pg_dir/data
password_file=$pg_dir/password

# initdb and the server refuse to run as root: as root, run them as $os_user, who must own the directory.
as_pg() {
    if ((EUID == 0)); then
        runuser -u "$os_user" -- "$@"
    else
        "$@"
    fi
}

if [[ ! -s $data/PG_VERSION ]]; then
    log "initialising a PostgreSQL cluster in $data"
    mkdir -p "$pg_dir"
    chmod 700 "$pg_dir"
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$password_file")
    if ((EUID == 0)); then
        id "$os_user" >/dev/null 2>&1 || die "running as root needs an OS user to run PostgreSQL: $os_user does not exist (set GANOPS_POSTGRES_OS_USER)"
        chown -R "$os_user" "$pg_dir"
        as_pg test -w "$pg_dir" ||
            die "$os_user cannot reach $pg_dir (a parent directory is closed to it): choose GANOPS_SERVICES_DIR elsewhere"
    fi
    as_pg "$pg_bin/initdb" -D "$data" -U postgres --pwfile="$password_file" --auth=scram-sha-256 \
        --encoding=UTF8 --no-locale >"$pg_dir/initdb.log" 2>&1 ||
        die "initdb failed; its output is in $pg_dir/initdb.log"
fi
[[ -s $password_file ]] || die "$password_file is missing: remove $pg_dir to start afresh"
password=$(<"$password_file")

if as_pg "$pg_bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    running_port=$(sed -n 4p "$data/postmaster.pid")
    if [[ $running_port != "$port" ]]; then
        log "PostgreSQL in $data is already running on port $running_port (not $port); using it"
        port=$running_port
    fi
else
    require_free_port "$host" "$port"
    log "starting PostgreSQL on $host:$port (log: $pg_dir/postgres.log)"
    # setsid: the server is not in this shell's process group, so Ctrl-C on a server started after it
    # (mlflow) does not stop the database under it.
    as_pg setsid "$pg_bin/pg_ctl" -D "$data" -l "$pg_dir/postgres.log" -w -t 60 \
        -o "-p $port -c listen_addresses=$host -c unix_socket_directories=''" start >&2 ||
        die "PostgreSQL did not start; see $pg_dir/postgres.log"
fi

for db in "$@"; do
    [[ $db =~ ^[a-z_][a-z0-9_]*$ ]] || die "database name '$db': use lower-case letters, digits and _"
    psql_cmd=("$pg_bin/psql" -h "$host" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -tA)
    exists=$(PGPASSWORD=$password "${psql_cmd[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$db'")
    if [[ $exists != 1 ]]; then
        log "creating database $db"
        PGPASSWORD=$password "${psql_cmd[@]}" -c "CREATE DATABASE $db" >/dev/null
    fi
done

printf 'export GANOPS_POSTGRES_URI=postgresql://postgres:%s@%s:%s\n' "$password" "$(client_host "$host")" "$port"
