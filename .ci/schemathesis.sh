#!/usr/bin/env bash
# Property-based test of the Cloud against its own /openapi.json (integrator
# operations): schemathesis generates valid and invalid requests and checks that no
# answer is a 5xx, every status and body is one the document declares, and every
# answer is JSON. Bounded: a fixed number of examples per operation and a fixed seed.
# The coverage phase is left out: under CPython 3.11 it stops with an internal error
# of the tool (hypothesis's lambda-source introspection: "AST constructor recursion
# depth mismatch"), not a finding.
#
# Usage: .ci/schemathesis.sh [MAX_EXAMPLES]   (default 100)
# Installs schemathesis in a temporary venv; skips (exit 0) with a message when PyPI
# cannot be reached.
set -euo pipefail
cd "$(dirname "$0")/.."
max_examples="${1:-100}"
version="4.32.5"

work=$(mktemp -d)
demo_pid=""
cleanup() {
  if [ -n "$demo_pid" ]; then kill "$demo_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if ! python3 -m venv "$work/venv" >/dev/null 2>&1 \
  || ! timeout 300 "$work/venv/bin/pip" install -q "schemathesis==$version" >"$work/pip.log" 2>&1; then
  echo "skipping schemathesis: could not install schemathesis $version from PyPI (offline?)"
  tail -3 "$work/pip.log" 2>/dev/null || true
  exit 0
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cargo build -q -p halo-demo
"${CARGO_TARGET_DIR:-target}/debug/halo-demo" --listen "127.0.0.1:$port" >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 120); do
  grep -q 'OpenAPI:' "$work/demo.log" && break
  sleep 0.5
done
key=$(grep -o "Ocp-Apim-Subscription-Key: [^']*" "$work/demo.log" | head -1 | cut -d' ' -f2)
if [ -z "$key" ]; then
  echo "the demo did not start:"
  cat "$work/demo.log"
  exit 1
fi

"$work/venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --include-tag integrator \
  -H "Ocp-Apim-Subscription-Key: $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,fuzzing,stateful \
  --max-examples "$max_examples" --seed 20261201 --workers 2 \
  --generation-database none --no-color
