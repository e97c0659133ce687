# Shared helpers for the service scripts in infra/ (sourced, never run).
# shellcheck shell=bash

PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[ganops-infra] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# The directory holding each local service's state (databases, artifacts, PREFECT_HOME). A new one gets
# a .gitignore of its own, so the default inside the project never shows up in `git status`.
services_dir() {
    local dir=${GANOPS_SERVICES_DIR:-$PROJECT_ROOT/.services}
    if [[ ! -d $dir ]]; then
        mkdir -p "$dir"
        printf '*\n' >"$dir/.gitignore"
    fi
    (cd "$dir" && pwd)
}

# A console script of the project's environment: the active venv (`uv run`), else the project's .venv,
# else PATH (a container whose venv is on PATH).
find_tool() {
    local name=$1
    if [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/$name ]]; then
        printf '%s\n' "$VIRTUAL_ENV/bin/$name"
    elif [[ -x $PROJECT_ROOT/.venv/bin/$name ]]; then
        printf '%s\n' "$PROJECT_ROOT/.venv/bin/$name"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    else
        die "$name not found: run \`make install\` (or \`uv sync\`) in $PROJECT_ROOT first"
    fi
}

# Fail before starting a server whose port is taken (the server's own error comes late and is obscure).
require_free_port() {
    local port=$2 probe=$1
    [[ $probe == 0.0.0.0 || $probe == "::" ]] && probe=127.0.0.1
    if (exec 3<>"/dev/tcp/$probe/$port") 2>/dev/null; then
        die "port $port on $probe is already in use (choose another with the port variable of this script)"
    fi
}

# The address that clients on this machine use for a server bound to `host`.
client_host() {
    case $1 in
        0.0.0.0 | "::") printf '127.0.0.1\n' ;;
        *) printf '%s\n' "$1" ;;
    esac
}

# Ray's token authentication (RAY_AUTH_MODE=token, the default here): every node and client of a cluster
# must hold the same token, in RAY_AUTH_TOKEN or the file RAY_AUTH_TOKEN_PATH [~/.ray/auth_token].
# `generate` (the head) creates a token file when there is none; `require` (a worker) insists on one.
ray_auth_setup() {
    export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
    [[ $RAY_AUTH_MODE == token ]] || return 0
    [[ -n ${RAY_AUTH_TOKEN:-} ]] && return 0
    local path=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
    if [[ ! -s $path ]]; then
        [[ $1 == generate ]] || die "Ray token authentication is on but $path holds no token: copy the head's token file there (or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), or set RAY_AUTH_MODE=disabled on every node"
        mkdir -p "$(dirname "$path")"
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$path")
        log "generated a Ray authentication token in $path (every node and client needs it)"
    fi
    export RAY_AUTH_TOKEN_PATH=$path
}

# The lines a Ray client exports to reach the cluster at $1.
print_ray_client_env() {
    printf 'export RAY_ADDRESS=%s\n' "$1"
    printf 'export RAY_AUTH_MODE=%s\n' "$RAY_AUTH_MODE"
    if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
        printf 'export RAY_AUTH_TOKEN_PATH=%s\n' "$RAY_AUTH_TOKEN_PATH"
    fi
}
