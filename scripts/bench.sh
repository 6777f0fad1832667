#!/usr/bin/env bash
# `make bench`: one benchmark run on this machine.
#
#  1. release build of the server, the load generator and the two peers;
#  2. the codec's criterion benches with short measurement times;
#  3. the load-test matrix, case by case and within a case in rounds of one
#     run per server (pinned to SERVER_CPU), the generator pinned to
#     GEN_CPU: echo 20 B and 16 KiB, broadcast to
#     1,000 and 10,000 subscribers, idle memory at 10,000 connections and a
#     connect storm, against ringcast (io_uring and epoll), tokio-tungstenite
#     and fastwebsockets;
#  4. docs/benchmarks/latest.md + SVG charts, and the summary on stdout.
#
# Knobs (environment): SERVER_CPU, GEN_CPU, BENCH_DURATION (s per window),
# BENCH_REPEAT (rounds), BENCH_WARMUP (s), BENCH_PORT, CRITERION_ARGS,
# BENCH_SKIP_CRITERION=1, BENCH_SERVERS (space-separated subset of labels),
# BENCH_REPORT_ONLY=1 (rewrite latest.md and charts from the last results),
# BENCH_BASE=REV (also build ringcast at git revision REV and run it as the
# peers `base-io-uring` and `base-epoll`, in the same rounds: the proof that
# a change moves no figure; the report then goes to docs/benchmarks/vs-base.md
# and leaves latest.md and the charts alone).
set -euo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
DURATION=${BENCH_DURATION:-3}
REPEAT=${BENCH_REPEAT:-3}
WARMUP=${BENCH_WARMUP:-1}
PORT=${BENCH_PORT:-9700}
CRITERION_ARGS=${CRITERION_ARGS:---warm-up-time 0.5 --measurement-time 1}
BASE=${BENCH_BASE:-}
if [ -n "$BASE" ]; then
  SERVERS=${BENCH_SERVERS:-ringcast-io-uring base-io-uring ringcast-epoll base-epoll}
  PEERS=base-io-uring,base-epoll
else
  SERVERS=${BENCH_SERVERS:-ringcast-io-uring ringcast-epoll tokio-tungstenite fastwebsockets}
  PEERS=tokio-tungstenite,fastwebsockets
fi

OUT=target/bench
RES=$OUT/results
DOCS=docs/benchmarks

log() { printf '\n== %s (t+%ss)\n' "$*" "$(($(date +%s) - START))" >&2; }

if [ "$(nproc)" -lt 2 ] && [ "$SERVER_CPU" != "$GEN_CPU" ]; then
  echo "bench: only $(nproc) CPU available; server and generator share CPU 0" >&2
  SERVER_CPU=0
  GEN_CPU=0
fi
command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is required" >&2; exit 2; }

LT=target/release/ringcast-loadtest
# BENCH_REPORT_ONLY=1: rewrite latest.md and the charts from the results of
# the last run (target/bench), without measuring anything.
if [ "${BENCH_REPORT_ONLY:-0}" = 1 ]; then
  cargo build --release -p ringcast-loadtest
  SERVER_CPU=$(cat "$OUT/server-cpu" 2>/dev/null || echo "$SERVER_CPU")
  GEN_CPU=$(cat "$OUT/gen-cpu" 2>/dev/null || echo "$GEN_CPU")
else
  log "release build"
  cargo build --release -p ringcast -p ringcast-loadtest -p peer-tungstenite -p peer-fastws
  if [ -n "$BASE" ]; then
    log "release build of ringcast at $BASE"
    base_src=target/bench-base/src
    rm -rf "$base_src" && mkdir -p "$base_src"
    git archive "$BASE" | tar -x -C "$base_src"
    # Same profile (it comes with the tree); its own target dir keeps the
    # two builds apart.
    (cd "$base_src" && CARGO_TARGET_DIR=../target cargo build --release -p ringcast)
    cp target/bench-base/target/release/ringcast target/release/ringcast-base
  fi

  # Only now that everything built: the previous run's results go.
  mkdir -p "$RES" "$OUT/logs" "$DOCS"
  rm -f "$RES"/*.json "$OUT"/logs/*.log
  : >"$OUT/commands.txt"
  : >"$OUT/failures.txt"
  cut -d' ' -f1-3 /proc/loadavg >"$OUT/loadavg-start"
  date -u '+%Y-%m-%d %H:%M UTC' >"$OUT/date"

  # -- codec microbenchmarks ----------------------------------------------------
  CRIT_SINCE=$(date +%s)
  if [ "${BENCH_SKIP_CRITERION:-0}" != 1 ]; then
    log "criterion codec benches ($CRITERION_ARGS)"
    # shellcheck disable=SC2086 # CRITERION_ARGS is a list of flags
    if ! cargo bench -p ringcast-benches -- $CRITERION_ARGS >"$OUT/criterion.txt" 2>&1; then
      echo "criterion benches failed; see $OUT/criterion.txt" | tee -a "$OUT/failures.txt" >&2
    fi
  fi
  "$LT" criterion-table --since "$CRIT_SINCE" --markdown "$OUT/criterion.md"

  # -- servers ------------------------------------------------------------------
  server_cmd() {
    local addr=127.0.0.1:$PORT
    case $1 in
      ringcast-io-uring) echo "target/release/ringcast --listen $addr --backend io-uring --shards 1 --log-level warn" ;;
      ringcast-epoll) echo "target/release/ringcast --listen $addr --backend epoll --shards 1 --log-level warn" ;;
      base-io-uring) echo "target/release/ringcast-base --listen $addr --backend io-uring --shards 1 --log-level warn" ;;
      base-epoll) echo "target/release/ringcast-base --listen $addr --backend epoll --shards 1 --log-level warn" ;;
      tokio-tungstenite) echo "target/release/peer-tungstenite --listen $addr" ;;
      fastwebsockets) echo "target/release/peer-fastws --listen $addr" ;;
      *) echo "unknown server $1" >&2; return 1 ;;
    esac
  }

  port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

  SERVER_PID=
  start_server() {
    local label=$1 cmd
    cmd=$(server_cmd "$label")
    # A leftover listener would be measured instead of ours.
    while port_open; do PORT=$((PORT + 1)); cmd=$(server_cmd "$label"); done
    # shellcheck disable=SC2086 # cmd is a command line built above
    taskset -c "$SERVER_CPU" $cmd >>"$OUT/logs/$label.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
      port_open && return 0
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    echo "bench: $label did not start listening on $PORT; see $OUT/logs/$label.log" >&2
    return 1
  }

  stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 150); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    # Give the kernel a moment to tear down the old sockets.
    sleep 0.3
  }
  trap stop_server EXIT

  N=0
  # run_case CASE LABEL SCENARIO PATH ARGS...: fresh server, one generator run.
  run_case() {
    local case=$1 label=$2 scenario=$3 path=$4
    shift 4
    N=$((N + 1))
    start_server "$label" || { echo "$case $label: server failed to start" >>"$OUT/failures.txt"; return 0; }
    local file
    file=$(printf '%s/%02d-%s-%s.json' "$RES" "$N" "$case" "$label")
    local args=("$scenario" --url "ws://127.0.0.1:$PORT$path" --server-pid "$SERVER_PID"
      --label "$label" --case "$case" --out "$file" --quiet "$@")
    echo "taskset -c $SERVER_CPU $(server_cmd "$label")" >>"$OUT/commands.txt"
    echo "taskset -c $GEN_CPU $LT ${args[*]}" >>"$OUT/commands.txt"
    local rc=0
    taskset -c "$GEN_CPU" "$LT" "${args[@]}" || rc=$?
    [ "$rc" = 0 ] || echo "$case $label: ringcast-loadtest exited with $rc" >>"$OUT/failures.txt"
    stop_server
  }

  TIMING=(--duration "$DURATION" --repeat 1 --warmup "$WARMUP")
  # Case by case, and within a case in rounds: each round runs every server
  # once, for one window. The machine's speed drifts over minutes (other
  # tenants), so a slow minute is spread over all servers instead of landing
  # on one; `report` takes the medians over the rounds.
  run_all() {
    local case=$1 rounds=$2
    shift 2
    log "$case: $rounds round(s) of $SERVERS (server on CPU $SERVER_CPU, generator on CPU $GEN_CPU)"
    for _ in $(seq "$rounds"); do
      for label in $SERVERS; do
        run_case "$case" "$label" "$@"
      done
    done
  }
  run_all echo-20B "$REPEAT" echo /echo -c 100 -k 4 -s 20 "${TIMING[@]}"
  run_all echo-16KiB "$REPEAT" echo /echo -c 100 -k 4 -s 16384 --binary "${TIMING[@]}"
  run_all broadcast-1k "$REPEAT" broadcast /broadcast -c 1000 -p 1 -k 8 -s 64 "${TIMING[@]}"
  run_all broadcast-10k "$REPEAT" broadcast /broadcast -c 10000 -p 1 -k 8 -s 64 "${TIMING[@]}"
  run_all idle-10k 1 idle /echo -c 10000 --settle 2 --duration 2
  run_all connect "$REPEAT" connect /echo -n 5000 --concurrency 64 --repeat 1

  echo "$(($(date +%s) - START))" >"$OUT/elapsed"
  cut -d' ' -f1-3 /proc/loadavg >"$OUT/loadavg-end"
  echo "$SERVER_CPU" >"$OUT/server-cpu"
  echo "$GEN_CPU" >"$OUT/gen-cpu"
fi

# -- report -------------------------------------------------------------------
log "report"
ELAPSED=$(cat "$OUT/elapsed")
REPORT_MD=$DOCS/latest.md
CHARTS=$DOCS
if [ -n "$BASE" ]; then
  REPORT_MD=$DOCS/vs-base.md
  CHARTS=$OUT/charts-base
  mkdir -p "$CHARTS"
fi
SUMMARY=$("$LT" report --input "$RES" --out-dir "$CHARTS" --markdown "$OUT/tables.md" \
  --peers "$PEERS")

cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
{
  if [ -n "$BASE" ]; then
    echo "# This tree against $BASE (ringcast ÷ base: a change that moves nothing gives 1.00×)"
  else
    echo "# Latest benchmark run"
  fi
  echo
  echo "Written by \`make bench\` (scripts/bench.sh), run started $(cat "$OUT/date"); measuring took ${ELAPSED} s (build included)."
  echo "How to read this: [../benchmarks.md](../benchmarks.md)."
  echo
  echo "## Machine"
  echo
  echo "- CPU: ${cpu_model:-unknown}, $(nproc) CPUs (\`nproc\`)"
  echo "- Kernel: $(uname -r)"
  echo "- Rust: $(rustc --version)"
  echo "- Load average at the start: $(cat "$OUT/loadavg-start"), at the end: $(cat "$OUT/loadavg-end") (other work on the machine shows up as noise)"
  echo "- Pinning: server \`taskset -c $SERVER_CPU\`, generator \`taskset -c $GEN_CPU\`"
  echo "- Rounds: ${REPEAT} per case, each running every server in turn for one window (${WARMUP} s warm-up, then ${DURATION} s); figures are per-field medians over the rounds"
  echo
  if [ -s "$OUT/failures.txt" ]; then
    echo "## Problems in this run"
    echo
    sed 's/^/- /' "$OUT/failures.txt"
    echo
  fi
  cat "$OUT/tables.md"
  echo "## Codec microbenchmarks (criterion, \`$CRITERION_ARGS\`)"
  echo
  cat "$OUT/criterion.md"
  echo
  echo "## Commands"
  echo
  echo '```'
  echo "cargo build --release -p ringcast -p ringcast-loadtest -p peer-tungstenite -p peer-fastws"
  [ -z "$BASE" ] || echo "git archive $BASE | tar -x -C target/bench-base/src && (cd target/bench-base/src && CARGO_TARGET_DIR=../target cargo build --release -p ringcast)"
  echo "cargo bench -p ringcast-benches -- $CRITERION_ARGS"
  cat "$OUT/commands.txt"
  echo '```'
} >"$REPORT_MD"

log "summary (full tables: $DOCS/latest.md, raw JSON: $RES)"
echo "$SUMMARY"
if [ -s "$OUT/failures.txt" ]; then
  echo
  echo "Problems:"
  sed 's/^/  /' "$OUT/failures.txt"
fi
echo
if [ "${BENCH_REPORT_ONLY:-0}" = 1 ]; then
  echo "latest.md and charts rewritten from $RES"
else
  echo "make bench took $(($(date +%s) - START)) s"
fi
# A failed check in a ringcast run is a bug to look at; peers' failures are
# reported above but do not fail the run.
if grep -q '^[^ ]* ringcast' "$OUT/failures.txt"; then
  exit 1
fi
