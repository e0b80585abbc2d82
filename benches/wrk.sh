#!/usr/bin/env bash
# Load-tests the `hello` example under each sgi runner against two peers serving the same
# "Hello, World!" (benches/peers: tiny_http and hyper), with wrk. Not run by CI.
#
#   bash benches/wrk.sh [--runners "serial threads pool fork"]
#
# Each server runs alone, pinned to CPU 0 (`taskset -c 0`), on 127.0.0.1; wrk runs pinned to
# CPU 1. Per server: a keep-alive run, a pipelined run and a `Connection: close` run of fixed
# duration, the
# requests/s wrk reports, and the server's CPU time per request (utime+stime from /proc/PID/stat
# of the server and its descendants, before and after the run, over the request count). Prints a
# Markdown table with ratios against tiny_http and hyper from the same run.
#
# Runners: by default every name `hello --help` lists (sgi::runner::NAMES); a runner the example
# rejects with "unknown runner" is skipped.
#
# Environment (defaults in brackets):
#   DURATION [10s]     length of each wrk run (wrk syntax: 5s, 1m)
#   WARMUP [1s]        unmeasured wrk run before each server's measurements; 0 to skip
#   CONNECTIONS [64]   wrk -c
#   THREADS [1]        wrk -t
#   WORKERS [4]        --workers for the sgi runners and tiny_http (hyper runs current_thread)
#                      (for threads and fork it bounds the connections served at once: with
#                      WORKERS < CONNECTIONS the other keep-alive clients wait in the backlog
#                      and wrk reports timeouts; set WORKERS=$CONNECTIONS to compare them unbounded)
#   PIPELINE [16]      requests per write in the pipelined run (a wrk Lua script); 0 to skip it
#   BASELINE []        path to another build of the hello example (say, the previous commit's),
#                      measured with its pool runner as "baseline pool", for before/after ratios
#   PORT [18080]       first port; each server gets the next one
#   SERVER_CPU [0]     CPU the server is pinned to
#   CLIENT_CPU [1]     CPU wrk is pinned to
#
# Needs: wrk (Debian package `wrk`; installed with apt-get if missing and running as root),
# taskset (util-linux), cargo.

set -euo pipefail

started=$SECONDS
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-4}
PORT=${PORT:-18080}
PIPELINE=${PIPELINE:-16}
BASELINE=${BASELINE:-}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
runners=""

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

while (($#)); do
    case $1 in
        --runners) runners=${2:?--runners needs a value}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) echo "error: unknown argument $1" >&2; usage ;;
    esac
done

log() { echo "== $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# wrk duration (5s, 2m, 1h, plain seconds) in seconds, for the safety timeout around wrk.
seconds() {
    local d=$1
    case $d in
        *ms) echo 1 ;;
        *s) echo "${d%s}" ;;
        *m) echo $(("${d%m}" * 60)) ;;
        *h) echo $(("${d%h}" * 3600)) ;;
        *) echo "$d" ;;
    esac
}

# --- tools -------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "wrk missing: apt-get install -y wrk"
        apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    fi
    command -v wrk >/dev/null || die "wrk not found (Debian: apt-get install wrk)"
fi
command -v taskset >/dev/null || die "taskset not found (util-linux)"
if (($(nproc) < 2)); then
    die "needs 2 CPUs (server on one, wrk on the other); this machine has $(nproc)"
fi
clk_tck=$(getconf CLK_TCK)

# --- build -------------------------------------------------------------------------------------
log "building the hello example and the peers (release)"
(cd "$root" && cargo build --release --example hello)
(cd "$root/benches/peers" && cargo build --release)
# The examples' target directory can be moved with CARGO_TARGET_DIR; the peers' is their own.
hello="${CARGO_TARGET_DIR:-$root/target}/release/examples/hello"
peers="$root/benches/peers/target/release"
[[ -x $hello ]] || die "$hello not built"

if [[ -z $runners ]]; then
    # `hello --help` lists sgi::runner::NAMES on its "runners:" line.
    runners=$("$hello" --help 2>&1 | sed -n 's/^ *runners: *//p' | tr -d ,)
    [[ -n $runners ]] || runners="serial threads pool fork"
fi

# --- process helpers ---------------------------------------------------------------------------
server_pid=""

# The pid and all its descendants (the fork runner's workers are child processes).
tree() {
    local pid=$1 child
    echo "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        tree "$child"
    done
}

# utime+stime+cutime+cstime, in clock ticks, summed over the process tree: threads are included in
# a process's own numbers, reaped children in its c-numbers, live children in their own.
cpu_ticks() {
    local total=0 pid stat
    for pid in $(tree "$1"); do
        stat=$(cat /proc/"$pid"/stat 2>/dev/null) || continue
        # Fields after "(comm) ": state is field 3, utime 14, stime 15, cutime 16, cstime 17.
        read -r -a f <<<"${stat##*) }"
        total=$((total + f[11] + f[12] + f[13] + f[14]))
    done
    echo "$total"
}

stop_server() {
    local pid=$server_pid p i
    [[ -n $pid ]] || return 0
    server_pid=""
    local pids
    pids=$(tree "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    # Whatever is still alive (the server itself or workers it left behind) gets SIGKILL.
    for p in $pids; do
        kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME PORT LOGFILE CMD... : starts CMD pinned to SERVER_CPU, waits (10 s at most) until it
# accepts on PORT. Returns 1 if it exited first (see LOGFILE), dies if it never accepts.
start_server() {
    local name=$1 port=$2 logfile=$3 i
    shift 3
    port_open "$port" && die "something already listens on 127.0.0.1:$port (set PORT)"
    taskset -c "$SERVER_CPU" "$@" >"$logfile" 2>&1 &
    server_pid=$!
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            wait "$server_pid" 2>/dev/null || true
            server_pid=""
            return 1
        fi
        port_open "$port" && return 0
        sleep 0.1
    done
    stop_server
    die "$name did not accept on 127.0.0.1:$port within 10 s; log: $(cat "$logfile")"
}

# run_wrk PORT OUTFILE DURATION [wrk args...]
run_wrk() {
    local port=$1 out=$2 duration=$3
    shift 3
    timeout $(($(seconds "$duration") + 30)) taskset -c "$CLIENT_CPU" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency "$@" "http://127.0.0.1:$port/" >"$out" 2>&1 ||
        { cat "$out" >&2; die "wrk failed"; }
}

# --- measurements ------------------------------------------------------------------------------
workdir=$(mktemp -d "${TMPDIR:-/tmp}/sgi-wrk.XXXXXX")
declare -A rps_ka rps_close rps_pipe cpu_ka cpu_close cpu_pipe p99_ka p99_close errors
servers=()
variants="keepalive close"
if ((PIPELINE > 0)); then
    variants="keepalive pipelined close"
    # wrk sends PIPELINE requests in one write and counts each response.
    cat >"$workdir/pipeline.lua" <<LUA
init = function(args)
    local r = {}
    for i = 1, $PIPELINE do r[i] = wrk.format(nil, "/") end
    req = table.concat(r)
end
request = function() return req end
LUA
fi

# measure NAME CMD... (the server's --bind argument is appended)
measure() {
    local name=$1 port=$((PORT + ${#servers[@]})) variant before after requests
    shift
    log "$name on 127.0.0.1:$port"
    if ! start_server "$name" "$port" "$workdir/$name.log" "$@" --bind "127.0.0.1:$port"; then
        if grep -q "unknown runner" "$workdir/$name.log"; then
            log "skipping $name: $(head -1 "$workdir/$name.log")"
            return 0
        fi
        die "$name exited at start: $(cat "$workdir/$name.log")"
    fi
    servers+=("$name")
    if [[ $WARMUP != 0 ]]; then
        run_wrk "$port" "$workdir/$name.warmup.txt" "$WARMUP"
    fi
    errors[$name]=""
    for variant in $variants; do
        local args=() out="$workdir/$name.$variant.txt"
        [[ $variant == close ]] && args=(-H "Connection: close")
        [[ $variant == pipelined ]] && args=(-s "$workdir/pipeline.lua")
        before=$(cpu_ticks "$server_pid")
        run_wrk "$port" "$out" "$DURATION" "${args[@]}"
        after=$(cpu_ticks "$server_pid")
        kill -0 "$server_pid" 2>/dev/null || die "$name died during the $variant run: $(cat "$workdir/$name.log")"
        requests=$(awk '/requests in/ {print $1}' "$out")
        local rps p99 cpu
        rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
        p99=$(awk '$1 == "99%" {print $2}' "$out")
        cpu=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="${requests:-0}" \
            'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }')
        # Socket errors / non-2xx lines, if any, go into the notes.
        local bad
        bad=$(grep -E 'Socket errors|Non-2xx' "$out" | sed 's/^ *//' | paste -sd ';' -) || true
        [[ -n $bad ]] && errors[$name]+="$variant: $bad. "
        if [[ $variant == keepalive ]]; then
            rps_ka[$name]=$rps cpu_ka[$name]=$cpu p99_ka[$name]=$p99
        elif [[ $variant == pipelined ]]; then
            rps_pipe[$name]=$rps cpu_pipe[$name]=$cpu
        else
            rps_close[$name]=$rps cpu_close[$name]=$cpu p99_close[$name]=$p99
        fi
        log "  $variant: $rps req/s, $cpu µs CPU/req, p99 $p99${bad:+, $bad}"
    done
    stop_server
}

for runner in $runners; do
    measure "sgi $runner" "$hello" --runner "$runner" --workers "$WORKERS"
done
if [[ -n $BASELINE ]]; then
    measure "baseline pool" "$BASELINE" --runner pool --workers "$WORKERS"
fi
measure tiny_http "$peers/tiny_http_hello" --workers "$WORKERS"
measure hyper "$peers/hyper_hello" --workers 1

# --- report ------------------------------------------------------------------------------------
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP); server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU;" \
    "sgi runners and tiny_http with $WORKERS workers, hyper current_thread; $(nproc) CPUs, $(uname -r)"
echo
echo "| server | keep-alive req/s | pipelined ($PIPELINE) req/s | close req/s | CPU µs/req (keep-alive) | CPU µs/req (pipelined) | CPU µs/req (close) | p99 keep-alive | p99 close | keep-alive vs hyper | pipelined vs hyper | close vs hyper | keep-alive vs tiny_http | close vs tiny_http |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in "${servers[@]}"; do
    echo "| $name | ${rps_ka[$name]} | ${rps_pipe[$name]:-} | ${rps_close[$name]} | ${cpu_ka[$name]} | ${cpu_pipe[$name]:-} | ${cpu_close[$name]}" \
        "| ${p99_ka[$name]} | ${p99_close[$name]} | $(ratio "${rps_ka[$name]}" "${rps_ka[hyper]:-}")" \
        "| $(ratio "${rps_pipe[$name]:-}" "${rps_pipe[hyper]:-}") | $(ratio "${rps_close[$name]}" "${rps_close[hyper]:-}")" \
        "| $(ratio "${rps_ka[$name]}" "${rps_ka[tiny_http]:-}") | $(ratio "${rps_close[$name]}" "${rps_close[tiny_http]:-}") |"
done
notes=0
for name in "${servers[@]}"; do
    if [[ -n ${errors[$name]} ]]; then
        ((notes++)) || echo
        echo "- $name: ${errors[$name]}"
    fi
done
echo
echo "Raw wrk output: $workdir. Total time: $((SECONDS - started)) s."
