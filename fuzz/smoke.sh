#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds (default 20) on the nightly toolchain,
# starting from the committed seed corpus. New inputs go to a scratch directory so
# the committed corpus stays small; crashes land in fuzz/artifacts/<target>/.
# Prints one line per target with its executions; exits non-zero on any crash.
set -euo pipefail
secs="${1:-20}"
cd "$(dirname "$0")"
targets=$(cargo +nightly fuzz list)
# One build for every target (`fuzz build` takes at most one target name).
cargo +nightly fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for t in $targets; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz $t: ok, ${execs} executions in ${secs}s"
  else
    echo "fuzz $t: FAILED (see below)"
    tail -n 40 "$log"
    status=1
  fi
done
exit $status
