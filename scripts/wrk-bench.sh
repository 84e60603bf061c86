#!/usr/bin/env bash
# wrk (Debian package) from a separate process against GET /api/npcs/{id} of a release
# game_server: 100k NPCs at 20 Hz on the embedded store, ids 1..100000 in turn, 2 threads,
# 50 connections, 15 s, after a 3 s warm-up (the store holds every NPC by then). Prints wrk's
# report, the count of each status code, and the server's JSON summary.
#
#   cargo build --release -p terrarium-server --example game_server --all-features
#   scripts/wrk-bench.sh                       # the server's default limits
#   TERRARIUM_SERVER__RATE_LIMIT_PER_S=1000000 TERRARIUM_SERVER__RATE_BURST=1000000 \
#   TERRARIUM_SERVER__KEY_RATE_LIMIT_PER_S=1000000 TERRARIUM_SERVER__KEY_RATE_BURST=1000000 \
#     scripts/wrk-bench.sh                     # limits raised: what the server itself serves
set -euo pipefail
cd "$(dirname "$0")/.."
server="${GAME_SERVER:-target/release/examples/game_server}"
[[ -x "$server" ]] || { echo "build it first: cargo build --release -p terrarium-server --example game_server --all-features" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
work="$(mktemp -d)"
key="wrk-benchmark-key-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TERRARIUM_SERVER__API_KEY="$key" "$server" --port 0 --npcs 100000 --tick-hz 20 --threads 2 \
  --data-dir "$work/data" --json >"$work/out" 2>"$work/err" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 300); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.2; done
addr="$(sed -n 's/^listening on //p' "$work/out")"
[[ -n "$addr" ]] || { cat "$work/err" >&2; exit 1; }
cat >"$work/ids.lua" <<'LUA'
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function() n = 0; codes = {} end
request = function()
  n = n + 1
  return wrk.format("GET", "/api/npcs/" .. (n % 100000 + 1))
end
response = function(status) codes[status] = (codes[status] or 0) + 1 end
done = function()
  local all = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("codes")) do all[k] = (all[k] or 0) + v end
  end
  for k, v in pairs(all) do io.write(string.format("status %d: %d\n", k, v)) end
end
LUA
sleep 3
uptime
wrk -t2 -c50 -d15s --latency -H "x-api-key: $key" -s "$work/ids.lua" "$addr"
uptime
kill -TERM "$pid"
wait "$pid" || true
tail -1 "$work/out"
