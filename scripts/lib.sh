# Shared by the scripts (sourced, not run): headings and background jobs.

# The run's start, shared with the scripts this one starts, so every heading tells how far
# into the whole run it is (CI's log then shows where the time goes).
export TALKIE_RUN_START=${TALKIE_RUN_START:-$(date +%s)}

# say TEXT: a heading, with the time since the run started.
say() {
    local elapsed=$(( $(date +%s) - TALKIE_RUN_START ))
    printf '\033[1m==> %s\033[0m  [%dm%02ds]\n' "$*" $((elapsed / 60)) $((elapsed % 60))
}

# background LOG COMMAND...: runs COMMAND in the background, its output in LOG, and sets
# BACKGROUND_PID. The job is never left running behind the script, however the script ends.
background_pids=()
background() {
    local log=$1
    shift
    mkdir -p "$(dirname "$log")"
    "$@" > "$log" 2>&1 &
    BACKGROUND_PID=$!
    background_pids+=("$BACKGROUND_PID")
    # (|| true: under set -e a failing command in a trap turns the exit status to 1)
    trap 'for pid in "${background_pids[@]}"; do pkill -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done' EXIT
}

# await_background PID LOG WHAT: waits for a background job; if it failed, says that WHAT
# failed and shows the end of its log, and returns 1.
await_background() {
    local pid=$1 log=$2 what=$3 status=0
    wait "$pid" || status=$?
    local others=()
    for other in "${background_pids[@]}"; do [ "$other" = "$pid" ] || others+=("$other"); done
    background_pids=("${others[@]}")
    if [ $status -ne 0 ]; then
        echo "error: $what failed (the end of $log):" >&2
        tail -40 "$log" >&2
        return 1
    fi
}
