#!/usr/bin/env bash
# The viewer in a real browser: headless Chromium (Debian's `chromium` package) driven by
# Playwright (`playwright-core` from npm, pinned by server/tests/browser/package-lock.json)
# against the game_server example with 10k NPCs. scripts/test.sh runs it after the Rust tests.
#
#   scripts/viewer-test.sh     install what is missing (as root), build game_server, run the test
#
# chromium, nodejs and npm are installed with apt-get when missing (needs root, like
# scripts/services.sh). When they can't be had, CI (CI set) fails and a developer machine skips
# with a note. GAME_SERVER=path runs an existing binary instead of building one. The test's
# screenshot is written to target/viewer-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})) && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || true
fi
for tool in chromium node npm; do
  if ! command -v "$tool" >/dev/null; then
    if [[ -n "${CI:-}" ]]; then
      echo "viewer browser test: $tool is missing and could not be installed (apt-get install chromium nodejs npm)" >&2
      exit 1
    fi
    echo "warning: $tool is missing; the viewer's browser test is skipped (apt-get install chromium nodejs npm)" >&2
    exit 0
  fi
done

if ! (cd server/tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2); then
  if [[ -n "${CI:-}" ]]; then
    echo "viewer browser test: npm ci failed in server/tests/browser" >&2
    exit 1
  fi
  echo "warning: npm ci failed (no registry?); the viewer's browser test is skipped" >&2
  exit 0
fi
if [[ -z "${GAME_SERVER:-}" ]]; then
  # The flags of the test suite's build (scripts/test.sh), so that it reuses this build's
  # artifacts: `-p terrarium-server` alone would unify dependency features differently.
  cargo build --locked --workspace --all-features --example game_server --quiet
  export GAME_SERVER=target/debug/examples/game_server
fi
exec node server/tests/browser/viewer.test.mjs
