#!/usr/bin/env bash
# Start the head node of a Ray cluster on this machine:
#
#   infra/ray-head.sh [extra `ray start` options]
#
# Like `ray start`, it returns once the node is up and leaves Ray's processes running in the background
# (stop them with infra/ray-stop.sh); RAY_BLOCK=1 keeps it in the foreground instead (`ray start --block`),
# for a supervisor or a container whose main process it is. It prints the lines that clients and
# workers export: RAY_ADDRESS, and Ray's authentication settings.
#
# Environment (defaults in brackets):
#   RAY_PORT [6379]                      GCS port, the one in RAY_ADDRESS
#   RAY_NODE_IP_ADDRESS [127.0.0.1]      this node's address: set the machine's own for workers elsewhere
#   RAY_NUM_CPUS, RAY_NUM_GPUS [all]     resources offered to Ray
#   RAY_INCLUDE_DASHBOARD [true]         the dashboard also serves the Jobs API (`ray job submit`)
#   RAY_DASHBOARD_HOST [127.0.0.1]  RAY_DASHBOARD_PORT [8265]
#   RAY_TEMP_DIR [Ray's /tmp/ray]        sessions, logs and sockets; one per node isolates clusters
#   RAY_BLOCK [0]                        1: run in the foreground
#   RAY_AUTH_MODE [token]                token | disabled; token: RAY_AUTH_TOKEN, or the file
#   RAY_AUTH_TOKEN_PATH [~/.ray/auth_token], created when missing
#   RAY_USAGE_STATS_ENABLED [0]          Ray's usage reports stay off unless set to 1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

port=${RAY_PORT:-6379}
node_ip=${RAY_NODE_IP_ADDRESS:-127.0.0.1}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
ray_auth_setup generate
ray=$(find_tool ray)
require_free_port "$node_ip" "$port"

args=(start --head --port "$port" --node-ip-address "$node_ip"
    --include-dashboard "${RAY_INCLUDE_DASHBOARD:-true}"
    --dashboard-host "${RAY_DASHBOARD_HOST:-127.0.0.1}" --dashboard-port "${RAY_DASHBOARD_PORT:-8265}")
[[ -n ${RAY_NUM_CPUS:-} ]] && args+=(--num-cpus "$RAY_NUM_CPUS")
[[ -n ${RAY_NUM_GPUS:-} ]] && args+=(--num-gpus "$RAY_NUM_GPUS")
[[ -n ${RAY_TEMP_DIR:-} ]] && args+=(--temp-dir "$RAY_TEMP_DIR")

if [[ ${RAY_BLOCK:-0} == 1 ]]; then
    print_ray_client_env "$node_ip:$port"
    exec "$ray" "${args[@]}" --block "$@"
fi
"$ray" "${args[@]}" "$@" >&2
print_ray_client_env "$node_ip:$port"
