#!/usr/bin/env bash
# Stop Ray on this machine.
#
#   RAY_TEMP_DIR=/tmp/ray-a infra/ray-stop.sh   only the node(s) started with that --temp-dir (their GCS,
#                                               raylet, dashboard, agents and workers), nothing else
#   infra/ray-stop.sh [ray stop options]        `ray stop`: EVERY Ray process of this user on this machine
#
# The scoped form sends SIGTERM, waits up to RAY_STOP_GRACE_S [10] seconds, then SIGKILLs what is left.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ -z ${RAY_TEMP_DIR:-} ]]; then
    exec "$(find_tool ray)" stop "$@"
fi
if [[ ! -d $RAY_TEMP_DIR ]]; then
    log "$RAY_TEMP_DIR does not exist: no Ray node to stop"
    exit 0
fi
temp_dir=$(cd "$RAY_TEMP_DIR" && pwd)
grace=${RAY_STOP_GRACE_S:-10}

# Every Ray process of a node names a path inside its temp dir (session, log or socket paths), except the
# agents and workers the raylet forks, which rename themselves (ray::...): take the descendants too.
pattern=$(printf '%s/' "$temp_dir" | sed 's/[][\.*^$+?(){}|]/\\&/g')
mapfile -t pids < <(pgrep -f -- "$pattern" || true)
if ((${#pids[@]} == 0)); then
    log "no Ray process uses $temp_dir"
    exit 0
fi
declare -A children=()
while read -r pid ppid; do
    children[$ppid]+="$pid "
done < <(ps -eo pid=,ppid=)
all=()
queue=("${pids[@]}")
declare -A seen=()
while ((${#queue[@]})); do
    pid=${queue[0]}
    queue=("${queue[@]:1}")
    [[ -n ${seen[$pid]:-} || $pid == "$$" ]] && continue
    seen[$pid]=1
    all+=("$pid")
    # shellcheck disable=SC2206  # the value is a space-separated list of pids
    queue+=(${children[$pid]:-})
done

log "stopping ${#all[@]} Ray processes of $temp_dir"
kill -TERM "${all[@]}" 2>/dev/null || true
deadline=$((SECONDS + grace))
while ((SECONDS < deadline)); do
    alive=()
    for pid in "${all[@]}"; do
        # A zombie has exited: only its parent's wait is missing.
        state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
        [[ -n $state && $state != Z* ]] && alive+=("$pid")
    done
    ((${#alive[@]} == 0)) && exit 0
    sleep 0.5
done
log "${#alive[@]} still running after ${grace}s: SIGKILL"
kill -KILL "${alive[@]}" 2>/dev/null || true
