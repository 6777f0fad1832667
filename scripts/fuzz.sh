#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60).
#
#   ./scripts/fuzz.sh [SECONDS]
#
# Crashes, timeouts (an input taking over 10 s: a hang) and out-of-memory
# (over 2 GiB RSS, or one allocation over 256 MiB: unbounded allocation)
# all count as findings: the script exits non-zero and libFuzzer leaves the
# input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
  echo "usage: $0 SECONDS" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Only stable Rust is installed; let it accept the nightly flags
# (-Zsanitizer, sancov) that cargo-fuzz passes.
export RUSTC_BOOTSTRAP=1

cd fuzz
status=0
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target" "artifacts/$target"
  echo "fuzz: $target for ${secs}s"
  # The first corpus directory receives new inputs; seeds/ is read only.
  if ! cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$secs" \
      -timeout=10 \
      -rss_limit_mb=2048 \
      -malloc_limit_mb=256 \
      -print_final_stats=1; then
    echo "fuzz: $target FOUND A PROBLEM (see fuzz/artifacts/$target)" >&2
    status=1
  fi
done
exit "$status"
