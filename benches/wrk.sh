#!/usr/bin/env bash
# Load-tests the `hello` example under each sgi runner against three peers serving the same
# "Hello, World!" (benches/peers: tiny_http, hyper, and a minimal hand-written epoll responder
# with a precomputed response and no parsing, the "epoll responder"), with wrk. Not run by CI.
#
#   bash benches/wrk.sh [--runners "serial threads pool fork"]
#
# Each server runs alone, pinned to CPU 0 (`taskset -c 0`), on 127.0.0.1; wrk runs pinned to
# CPU 1. Per server, runs of fixed duration: keep-alive (CONNECTIONS connections), pipelined
# (the same, PIPELINE requests per write), `Connection: close` (CLOSE_CONNECTIONS connections)
# and "one conn" (keep-alive on a single connection, for its p99 latency); of each, the
# requests/s wrk reports, and the server's CPU time per request (utime+stime from
# /proc/PID/stat of the server and its descendants, before and after the run, over the request
# count). Prints a Markdown table with ratios against tiny_http, hyper and the epoll responder
# from the same run: req/s ratios (higher is better) and "p99 one vs hyper", the one-connection
# p99 latency over hyper's (lower is better).
#
# Runners: by default every name `hello --help` lists (sgi::runner::NAMES); a runner the example
# rejects with "unknown runner" is skipped.
#
# Environment (defaults in brackets):
#   DURATION [10s]     length of each wrk run (wrk syntax: 5s, 1m)
#   WARMUP [1s]        unmeasured wrk run before each server's measurements; 0 to skip
#   CONNECTIONS [64]   wrk -c of the keep-alive and pipelined runs (and the warm-up)
#   CLOSE_CONNECTIONS [16]  wrk -c of the `Connection: close` run
#   THREADS [1]        wrk -t (at most the run's connection count: the one-connection run uses 1)
#   WORKERS [4]        --workers for the sgi runners and tiny_http (hyper runs current_thread,
#                      the epoll responder one thread)
#                      (for threads and fork it bounds the connections served at once: with
#                      WORKERS < CONNECTIONS the other keep-alive clients wait in the backlog
#                      and wrk reports timeouts; set WORKERS=$CONNECTIONS to compare them unbounded)
#   PIPELINE [16]      requests per write in the pipelined run (a wrk Lua script); 0 to skip it
#   ONE [1]            the one-connection keep-alive run; 0 to skip it
#   EXTRA []           more sgi configurations, each measured as "sgi NAME" with the hello
#                      example run with ARGS (as given, no --workers added) and --bind: entries
#                      NAME=ARGS separated by newlines or `;`, e.g.
#                      EXTRA='event+4 threads=--runner event --workers 1 --threads 4'
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
CLOSE_CONNECTIONS=${CLOSE_CONNECTIONS:-16}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-4}
PORT=${PORT:-18080}
PIPELINE=${PIPELINE:-16}
ONE=${ONE:-1}
EXTRA=${EXTRA:-}
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

# EXTRA's entries, checked before anything is built: "NAME=ARGS", NAME without a `/` (it names
# files) and trimmed.
extras=()
while IFS= read -r entry; do
    entry=${entry#"${entry%%[![:space:]]*}"}
    entry=${entry%"${entry##*[![:space:]]}"}
    [[ -n $entry ]] || continue
    [[ $entry == *=* ]] || die "EXTRA entry '$entry' is not NAME=ARGS"
    name=${entry%%=*}
    name=${name%"${name##*[![:space:]]}"}
    [[ -n $name && $name != */* ]] || die "EXTRA entry '$entry': NAME must be non-empty, without /"
    extras+=("$name=${entry#*=}")
done < <(tr ';' '\n' <<<"$EXTRA")

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

# run_wrk PORT OUTFILE DURATION CONNECTIONS [wrk args...] (wrk wants no more threads than
# connections)
run_wrk() {
    local port=$1 out=$2 duration=$3 connections=$4 threads=$THREADS
    shift 4
    ((threads <= connections)) || threads=$connections
    timeout $(($(seconds "$duration") + 30)) taskset -c "$CLIENT_CPU" \
        wrk -t"$threads" -c"$connections" -d"$duration" --latency "$@" "http://127.0.0.1:$port/" >"$out" 2>&1 ||
        { cat "$out" >&2; die "wrk failed"; }
}

# --- measurements ------------------------------------------------------------------------------
workdir=$(mktemp -d "${TMPDIR:-/tmp}/sgi-wrk.XXXXXX")
declare -A rps_ka rps_close rps_pipe rps_one cpu_ka cpu_close cpu_pipe p99_ka p99_close p99_one errors
servers=()
variants="keepalive"
((PIPELINE > 0)) && variants+=" pipelined"
variants+=" close"
[[ $ONE != 0 ]] && variants+=" one"
if ((PIPELINE > 0)); then
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
    local name=$1 port=$((PORT + ${#servers[@]})) variant before after requests other
    shift
    for other in "${servers[@]}"; do
        [[ $other != "$name" ]] || die "two servers named '$name' (see EXTRA)"
    done
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
        run_wrk "$port" "$workdir/$name.warmup.txt" "$WARMUP" "$CONNECTIONS"
    fi
    errors[$name]=""
    for variant in $variants; do
        local args=() out="$workdir/$name.$variant.txt" connections=$CONNECTIONS
        case $variant in
            pipelined) args=(-s "$workdir/pipeline.lua") ;;
            close) args=(-H "Connection: close") connections=$CLOSE_CONNECTIONS ;;
            one) connections=1 ;;
        esac
        before=$(cpu_ticks "$server_pid")
        run_wrk "$port" "$out" "$DURATION" "$connections" "${args[@]}"
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
        case $variant in
            keepalive) rps_ka[$name]=$rps cpu_ka[$name]=$cpu p99_ka[$name]=$p99 ;;
            pipelined) rps_pipe[$name]=$rps cpu_pipe[$name]=$cpu ;;
            close) rps_close[$name]=$rps cpu_close[$name]=$cpu p99_close[$name]=$p99 ;;
            one) rps_one[$name]=$rps p99_one[$name]=$p99 ;;
        esac
        log "  $variant: $rps req/s, $cpu µs CPU/req, p99 $p99${bad:+, $bad}"
    done
    stop_server
}

for runner in $runners; do
    measure "sgi $runner" "$hello" --runner "$runner" --workers "$WORKERS"
done
for entry in "${extras[@]}"; do
    read -r -a extra_args <<<"${entry#*=}"
    measure "sgi ${entry%%=*}" "$hello" "${extra_args[@]}"
done
if [[ -n $BASELINE ]]; then
    measure "baseline pool" "$BASELINE" --runner pool --workers "$WORKERS"
fi
measure tiny_http "$peers/tiny_http_hello" --workers "$WORKERS"
measure hyper "$peers/hyper_hello" --workers 1
epoll="epoll responder"
measure "$epoll" "$peers/epoll_hello" --workers 1

# --- report ------------------------------------------------------------------------------------
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# wrk latency (12.34us, 1.20ms, 2.00s, 1.00m) in µs, for ratios; 0 if not a latency.
micros() {
    awk -v t="${1:-}" 'BEGIN {
        n = t + 0; u = t; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 1 : (u == "ms") ? 1e3 : (u == "s") ? 1e6 : (u == "m") ? 6e7 : (u == "h") ? 3.6e9 : 0
        print n * f
    }'
}

echo
one_note=""
[[ $ONE != 0 ]] && one_note="\"one conn\" keep-alive with -t1 -c1; "
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP); \`Connection: close\` with -c$CLOSE_CONNECTIONS;" \
    "${one_note}server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU;" \
    "sgi runners and tiny_http with $WORKERS workers, hyper current_thread, epoll responder 1 thread; $(nproc) CPUs, $(uname -r)"
echo
echo "| server | keep-alive req/s | pipelined ($PIPELINE) req/s | close ($CLOSE_CONNECTIONS conns) req/s | one conn req/s | CPU µs/req (keep-alive) | CPU µs/req (pipelined) | CPU µs/req (close) | p99 keep-alive | p99 close | p99 one conn | keep-alive vs hyper | pipelined vs hyper | pipelined vs epoll | close vs hyper | p99 one vs hyper | keep-alive vs tiny_http | close vs tiny_http |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in "${servers[@]}"; do
    echo "| $name | ${rps_ka[$name]} | ${rps_pipe[$name]:-} | ${rps_close[$name]} | ${rps_one[$name]:-} | ${cpu_ka[$name]} | ${cpu_pipe[$name]:-} | ${cpu_close[$name]}" \
        "| ${p99_ka[$name]} | ${p99_close[$name]} | ${p99_one[$name]:-} | $(ratio "${rps_ka[$name]}" "${rps_ka[hyper]:-}")" \
        "| $(ratio "${rps_pipe[$name]:-}" "${rps_pipe[hyper]:-}") | $(ratio "${rps_pipe[$name]:-}" "${rps_pipe[$epoll]:-}")" \
        "| $(ratio "${rps_close[$name]}" "${rps_close[hyper]:-}")" \
        "| $(ratio "$(micros "${p99_one[$name]:-}")" "$(micros "${p99_one[hyper]:-}")")" \
        "| $(ratio "${rps_ka[$name]}" "${rps_ka[tiny_http]:-}") | $(ratio "${rps_close[$name]}" "${rps_close[tiny_http]:-}") |"
done
echo
echo "Ratios \"vs\" are of req/s (higher is better), except \"p99 one vs hyper\": the one-connection p99 latency over hyper's (lower is better)."
notes=0
for name in "${servers[@]}"; do
    if [[ -n ${errors[$name]} ]]; then
        ((notes++)) || echo
        echo "- $name: ${errors[$name]}"
    fi
done
echo
echo "Raw wrk output: $workdir. Total time: $((SECONDS - started)) s."
