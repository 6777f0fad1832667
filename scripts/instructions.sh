#!/usr/bin/env bash
# Server instructions per message under callgrind, for two ringcast
# binaries side by side: a count that does not move with the machine's
# speed, unlike CPU time on these shared machines (perf's instruction
# counter is not available here). For a change meant to move nothing:
#
#   BENCH_BASE=REV make bench       # also builds target/release/ringcast-base
#   scripts/instructions.sh target/release/ringcast target/release/ringcast-base
#
# Each binary runs under valgrind (epoll backend: valgrind does not know
# io_uring) on CPU 0 with the load generator on CPU 1, for echo 20 B,
# echo 16 KiB and broadcast to 1,000 subscribers, plus an idle run whose
# count (start-up and shutdown) is taken off the others.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 RINGCAST_BINARY [OTHER_BINARY...]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "instructions: valgrind is required" >&2; exit 2; }
LT=target/release/ringcast-loadtest
[ -x "$LT" ] || cargo build --release -p ringcast-loadtest
OUT=target/instructions
mkdir -p "$OUT"
# Runs one at a time, each server stopped before the next starts.
PORT=${INSTR_PORT:-9851}
SECS=${INSTR_SECONDS:-8}

# run BIN NAME SCENARIO PATH ARGS...: prints "instructions messages".
run() {
  local bin=$1 name=$2 scenario=$3 path=$4
  shift 4
  local out
  out="$OUT/$(basename "$bin")-$name"
  rm -f "$out.cg" "$out.json"
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out.cg" \
    "$bin" --listen "127.0.0.1:$PORT" --backend epoll --shards 1 --log-level warn >"$out.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  local n=0
  if [ "$scenario" = idle ]; then
    sleep 2
  else
    taskset -c 1 "$LT" "$scenario" --url "ws://127.0.0.1:$PORT$path" "$@" \
      --duration "$SECS" --warmup 0 --repeat 1 --out "$out.json" --quiet >/dev/null 2>&1
    n=$(python3 -c "import json; c = json.load(open('$out.json'))['checks']; print(c['verified'] or c['received'])")
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  local ir
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$out.cg")
  echo "$ir $n"
}

printf '| binary | echo 20 B | echo 16 KiB | broadcast 1k (per delivery) |\n|---|---:|---:|---:|\n'
for bin in "$@"; do
  read -r idle _ < <(run "$bin" idle idle /)
  cells=()
  for c in "echo-20B echo /echo -c 20 -k 4 -s 20" \
    "echo-16KiB echo /echo -c 20 -k 4 -s 16384 --binary" \
    "broadcast-1k broadcast /broadcast -c 1000 -p 1 -k 8 -s 64"; do
    # shellcheck disable=SC2086 # the case is a word list
    read -r ir n < <(run "$bin" $c)
    cells+=("$(python3 -c "print(f'{($ir - $idle) / max($n, 1):,.0f}')")")
  done
  printf '| %s | %s | %s | %s |\n' "$bin" "${cells[0]}" "${cells[1]}" "${cells[2]}"
done
