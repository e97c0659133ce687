#!/usr/bin/env bash
# Start a worker node and join it to the Ray cluster at RAY_ADDRESS (printed by infra/ray-head.sh):
#
#   RAY_ADDRESS=10.0.0.5:6379 infra/ray-worker.sh [extra `ray start` options]
#
# Returns once the node has joined, leaving Ray's processes in the background (infra/ray-stop.sh stops
# them); RAY_BLOCK=1 keeps it in the foreground.
#
# Environment (defaults in brackets):
#   RAY_ADDRESS (required)               the head's GCS address, host:port
#   RAY_NODE_IP_ADDRESS [Ray's choice: the address that reaches the head]
#   RAY_NUM_CPUS, RAY_NUM_GPUS [all]     resources offered to Ray
#   RAY_TEMP_DIR [Ray's /tmp/ray]        give a second node on the same machine its own
#   RAY_BLOCK [0]                        1: run in the foreground
#   RAY_AUTH_MODE [token]                as on the head; token: RAY_AUTH_TOKEN, or the head's token file
#   copied to RAY_AUTH_TOKEN_PATH [~/.ray/auth_token]
#   RAY_USAGE_STATS_ENABLED [0]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

address=${RAY_ADDRESS:-}
[[ -n $address ]] || die "RAY_ADDRESS is not set: export the head's address (infra/ray-head.sh prints it), e.g. RAY_ADDRESS=10.0.0.5:6379"
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
ray_auth_setup require
ray=$(find_tool ray)

args=(start --address "$address")
[[ -n ${RAY_NODE_IP_ADDRESS:-} ]] && args+=(--node-ip-address "$RAY_NODE_IP_ADDRESS")
[[ -n ${RAY_NUM_CPUS:-} ]] && args+=(--num-cpus "$RAY_NUM_CPUS")
[[ -n ${RAY_NUM_GPUS:-} ]] && args+=(--num-gpus "$RAY_NUM_GPUS")
[[ -n ${RAY_TEMP_DIR:-} ]] && args+=(--temp-dir "$RAY_TEMP_DIR")
if [[ ${RAY_BLOCK:-0} == 1 ]]; then
    args+=(--block)
fi
exec "$ray" "${args[@]}" "$@" >&2
