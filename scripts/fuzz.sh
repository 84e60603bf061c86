#!/usr/bin/env bash
# Coverage-guided fuzzing of everything that reads untrusted bytes (fuzz/, cargo-fuzz with
# libFuzzer; the targets are listed in fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   run each target SECONDS (default 20) from its seeds
#
# cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
# cargo-fuzz is installed when missing (cargo install --locked). Builds go to target/fuzz
# (fuzz/Cargo.toml's dev profile: opt-level 1, AddressSanitizer, debug assertions and overflow
# checks on). Inputs the fuzzer finds go to
# fuzz/corpus/TARGET (ignored by git); the checked-in seeds in fuzz/seeds/TARGET are only read.
# A crash, a leak, a timeout (10 s per input) or a single allocation over 512 MiB fails the
# run and leaves the input in fuzz/artifacts/TARGET/: turn it into a regression test of the
# normal suite (fuzz/README.md says how).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
shift || true
export RUSTC_BOOTSTRAP=1
# A known false positive of the leak check (a thread exiting while it runs): fuzz/lsan.supp.
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install --locked)" >&2
  cargo install --locked --quiet cargo-fuzz
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo fuzz list)
fi

# One build of every target (they share their dependencies); `run` then finds it up to date.
cargo fuzz build --dev --target-dir target/fuzz
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  printf '== fuzz %s for %ss\n' "$t" "$secs" >&2
  cargo fuzz run --dev --target-dir target/fuzz "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -print_final_stats=1 2>&1 | { grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )|ERROR|panicked|SUMMARY|Test unit written' || true; } >&2
done
