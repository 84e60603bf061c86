#!/usr/bin/env bash
# schemathesis (PyPI) against /api/openapi.json of a running game_server: no 5xx, and every
# response matches the document (status codes, content types, bodies). Bounded: a small world,
# memory storage, a few examples per operation, a fixed seed. Installs schemathesis when missing.
#
#   scripts/schemathesis.sh [EXAMPLES]     (default 30 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-30}"

if ! command -v schemathesis >/dev/null 2>&1; then
  echo "installing schemathesis (pip install --user)" >&2
  python3 -m pip install --quiet --user schemathesis
  export PATH="$HOME/.local/bin:$PATH"
fi

# The flags of the test suite's build (scripts/test.sh), so that its artifacts are shared.
cargo build --locked --quiet --workspace --all-features --example game_server
exe="target/debug/examples/game_server"
key="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
out="$(mktemp)"
TERRARIUM_SERVER__API_KEY="$key" "$exe" --port 0 --npcs 200 --storage memory >"$out" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 200); do
  grep -q '^listening on ' "$out" && break
  kill -0 "$pid" 2>/dev/null || { cat "$out" >&2; exit 1; }
  sleep 0.1
done
base="$(sed -n 's/^listening on //p' "$out" | head -1)"
[[ -n "$base" ]] || { echo "game_server did not start" >&2; cat "$out" >&2; exit 1; }

schemathesis run "$base/api/openapi.json" \
  --header "x-api-key: $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "$examples" --seed 15 --workers 1 --request-timeout 10
kill -TERM "$pid"
wait "$pid" || true
