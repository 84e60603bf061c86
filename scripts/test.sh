#!/usr/bin/env bash
# The whole test suite: the one entry point for developers and CI (.ci/run calls exactly this).
#
#   scripts/test.sh          start services when scripts/services.sh can, then run every check
#
# Steps: services (PostgreSQL + Redis on 127.0.0.1, installed when missing, see
# scripts/services.sh), cargo-nextest (installed when missing, so .config/nextest.toml's serial
# fault tests and timeouts always apply), cargo fmt --check, clippy -D warnings (all targets, all
# features), docs with -D warnings, a check of the default features, the unit and integration
# tests without default features (the sequential build), doc tests, each fuzz target briefly
# (scripts/fuzz.sh), the viewer in headless Chromium (scripts/viewer-test.sh), schemathesis
# against a running game_server (scripts/schemathesis.sh, installed when missing), then every
# test with nextest.
# Every cargo call is --locked. The last line printed is the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's header says the wall time so far and the CPU time the steps' processes have used
# so far (user + system, from bash's `times`): CPU seconds depend less than wall time on what
# else the machine runs, so they compare runs on a busy machine; on 2 cores a step can't take
# less wall time than half its CPU seconds.
# `times` runs in this shell (in a $(...) subshell it would count only that subshell's children).
times_file="$(mktemp)"
trap 'rm -f "$times_file"' EXIT
step() {
  times >"$times_file"
  local cpu
  cpu="$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$times_file")"
  printf '\n== %s (%ds so far, %d CPU-s)\n' "$*" "$SECONDS" "$cpu" >&2
}

if [[ -x scripts/services.sh ]]; then
  step "services"
  # In CI a service that does not start fails the run; on a developer machine without
  # PostgreSQL the suite goes on and the service tests skip (they say so).
  if services_env="$(scripts/services.sh start)"; then
    eval "$services_env"
  elif [[ -n "${CI:-}" ]]; then
    echo "scripts/services.sh start failed" >&2
    exit 1
  else
    echo "warning: services did not start; service tests will skip" >&2
  fi
  export TERRARIUM_TEST_PG_URL="${TERRARIUM_TEST_PG_URL:-${DATABASE_URL:-}}"
  export TERRARIUM_TEST_REDIS_URL="${TERRARIUM_TEST_REDIS_URL:-${REDIS_URL:-}}"
fi

step "cargo-nextest"
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (cargo install --locked)" >&2
  cargo install --locked --quiet cargo-nextest
fi

step "fmt"
cargo fmt --all -- --check

step "clippy (all targets, all features)"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --all-features --no-deps --quiet

# The feature matrix: all features (clippy above, the test build below), none (the sequential
# build's tests below build it) and the defaults, which no other step builds.
step "default features"
cargo check --locked --workspace --quiet

# The sequential build (`parallel` off, and no file store) is a build of its own: run the tests
# of the crates where those features change code (codec, engine, systems, persistence, and the
# facade's unit tests and its architecture and system-order checks), so it is held to the same
# pinned world hash (systems/tests/pinned_world.rs) and flocking checksums
# (systems/tests/flocking_parity.rs) as the parallel build. Tests that drive the examples and the game server end to end run in the
# all-features build below: without `parallel` they take the same code paths through
# `systems::par`, and building the examples a second time in this configuration was minutes of
# a 2-core CI run. The server and the benches are only compiled here (a cfg slip in them fails
# this step). Doc tests and benches are left to the default build. The service suites
# (postgres, redis, faults) need features that are off here, so they compile to nothing.
step "tests without default features (sequential)"
cargo check --locked --no-default-features -p terrarium-server -p terrarium-benches --quiet
cargo nextest run --locked --no-default-features --lib --tests --no-fail-fast \
  -p terrarium-codec -p terrarium-engine -p terrarium-systems -p terrarium-persistence -p terrarium \
  -E '(not package(terrarium)) | kind(lib) | binary(system_order) | binary(architecture)' \
  --status-level fail --final-status-level slow

step "doc tests"
cargo test --locked --workspace --all-features --doc --quiet

# Coverage-guided fuzzing (fuzz/, a workspace of its own; fuzz/README.md): every target for a
# few seconds from its checked-in seeds, on a stable toolchain (RUSTC_BOOTSTRAP=1 inside).
# TERRARIUM_FUZZ_SECONDS sets the time per target (0 skips the step).
fuzz_seconds="${TERRARIUM_FUZZ_SECONDS:-10}"
if [[ "$fuzz_seconds" != 0 ]]; then
  step "fuzz (${fuzz_seconds}s per target)"
  scripts/fuzz.sh "$fuzz_seconds"
fi

step "viewer in a browser (scripts/viewer-test.sh)"
scripts/viewer-test.sh

# An outside tool against the running server: no 5xx, responses as /api/openapi.json says
# (about 10 s once the example is built).
step "schemathesis (game_server's OpenAPI document)"
scripts/schemathesis.sh 20

step "tests"
cargo nextest run --locked --workspace --all-features --no-fail-fast
