#!/usr/bin/env bash
# `make perf`: profiles ringcast under the 16 KiB echo load (by default).
#
# ringcast (io_uring, one shard) runs pinned to SERVER_CPU, the load
# generator (100 connections × 4 in flight, 16 KiB binary echoes) to
# GEN_CPU; `perf record -e cpu-clock -g` samples the server only (this VM
# has no hardware counters). Writes docs/benchmarks/flamegraph.svg and
# docs/benchmarks/perf-top.txt and prints the top symbols, so the unmask
# loop's share is plain to see.
#
# Knobs: PERF_SECONDS (default 8), PERF_FREQ (default 999 Hz), PERF_BACKEND
# (io-uring|epoll), PERF_CALL_GRAPH (dwarf, the default, unwinds Rust frames
# built without frame pointers; fp is plain -g), PERF_PORT, PERF_CASE
# (echo-16KiB, the default, echo-20B or broadcast-10k; other cases write
# flamegraph-CASE.svg and perf-top-CASE.txt so the default ones stay).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
SECONDS_TO_RECORD=${PERF_SECONDS:-8}
FREQ=${PERF_FREQ:-999}
BACKEND=${PERF_BACKEND:-io-uring}
CALL_GRAPH=${PERF_CALL_GRAPH:-dwarf}
PORT=${PERF_PORT:-9790}
CASE=${PERF_CASE:-echo-16KiB}
OUT=target/perf
DOCS=docs/benchmarks
mkdir -p "$OUT" "$DOCS"
case $CASE in
  echo-16KiB) LOAD=(echo -c 100 -k 4 -s 16384 --binary); ROUTE=/echo; SUFFIX= ;;
  echo-20B) LOAD=(echo -c 100 -k 4 -s 20); ROUTE=/echo; SUFFIX=-echo-20B ;;
  broadcast-10k) LOAD=(broadcast -c 10000 -p 1 -k 8 -s 64); ROUTE=/broadcast; SUFFIX=-broadcast-10k ;;
  *) echo "perf: unknown PERF_CASE $CASE" >&2; exit 2 ;;
esac
FLAME=$DOCS/flamegraph$SUFFIX.svg
TOPFILE=$DOCS/perf-top$SUFFIX.txt

if ! command -v perf >/dev/null; then
  echo "perf: installing linux-perf" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi
paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)
if [ "$paranoid" -gt -1 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    # Kernel frames are a large part of a network server's profile.
    sysctl -q -w kernel.perf_event_paranoid=-1
  else
    echo "perf: perf_event_paranoid=$paranoid; run as root or: sudo sysctl kernel.perf_event_paranoid=-1" >&2
  fi
fi

cargo build --release -p ringcast -p ringcast-loadtest
LT=target/release/ringcast-loadtest

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
while port_open; do PORT=$((PORT + 1)); done

taskset -c "$SERVER_CPU" target/release/ringcast --listen "127.0.0.1:$PORT" \
  --backend "$BACKEND" --shards 1 --log-level warn >"$OUT/ringcast.log" 2>&1 &
SERVER_PID=$!
GEN_PID=
cleanup() {
  [ -z "$GEN_PID" ] || kill -TERM "$GEN_PID" 2>/dev/null || true
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do port_open && break; sleep 0.1; done
port_open || { echo "perf: ringcast did not start; see $OUT/ringcast.log" >&2; exit 1; }

# The load runs a little longer than the recording on both sides.
taskset -c "$GEN_CPU" "$LT" "${LOAD[@]}" --url "ws://127.0.0.1:$PORT$ROUTE" \
  --warmup 1 --duration "$((SECONDS_TO_RECORD + 2))" --server-pid "$SERVER_PID" \
  --label "ringcast-$BACKEND" --case "perf-$CASE" --out "$OUT/load.json" --quiet 2>"$OUT/load.txt" &
GEN_PID=$!
# Connecting 10,000 subscribers takes a moment before the load starts.
if [ "$CASE" = broadcast-10k ]; then sleep 4; else sleep 1.5; fi

echo "perf: recording ringcast (pid $SERVER_PID) for ${SECONDS_TO_RECORD} s at ${FREQ} Hz, call graph: $CALL_GRAPH" >&2
perf record -e cpu-clock -F "$FREQ" -g --call-graph "$CALL_GRAPH" -p "$SERVER_PID" \
  -o "$OUT/perf.data" -- sleep "$SECONDS_TO_RECORD" 2>"$OUT/record.log" || {
  cat "$OUT/record.log" >&2
  exit 1
}
wait "$GEN_PID" || true
GEN_PID=

echo "perf: folding stacks (perf script) and drawing the flame graph" >&2
perf script -i "$OUT/perf.data" 2>/dev/null >"$OUT/perf.script"
SHARES=$("$LT" flamegraph --input "$OUT/perf.script" --output "$FLAME" \
  --title "ringcast ($BACKEND, 1 shard): $CASE load (${LOAD[*]})" \
  --highlight ringcast_codec::mask --highlight utf8 --highlight memcpy --highlight memmove \
  --highlight _copy_to_iter --highlight _copy_from_iter)

TOP=$(perf report -i "$OUT/perf.data" --stdio --no-children --sort symbol -g none 2>/dev/null |
  awk '!/^#/ && NF { sub(/[ \t]+-[ \t]+-[ \t]*$/, ""); if (++n <= 30) print }')
{
  echo "make perf: ringcast --backend $BACKEND --shards 1 under the $CASE load: ringcast-loadtest ${LOAD[*]}"
  echo "perf record -e cpu-clock -F $FREQ -g --call-graph $CALL_GRAPH, ${SECONDS_TO_RECORD} s, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "load (generator's summary): $(head -1 "$OUT/load.txt")"
  echo
  echo "Top symbols (self time, perf report --no-children):"
  echo "$TOP"
  echo
  echo "Share of samples in frames matching (ringcast_codec::mask = the unmask loop;"
  echo "_copy_to_iter / _copy_from_iter = the kernel copying socket data to / from user space):"
  echo "$SHARES"
} >"$TOPFILE"

cat "$TOPFILE"
echo
echo "flame graph: $FLAME"
