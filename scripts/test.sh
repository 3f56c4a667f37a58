#!/usr/bin/env bash
# The test suite, as CI runs it: fetch ONNX Runtime 1.31.1 and the package tests' runtimes if they
# are not there yet (the tests run models in them), then `cargo test --release`, reporting every
# failing test binary rather than stopping at the first. Extra arguments go to cargo test: `scripts/test.sh --test it graph_edit`.
#
# Why --release: it tests the profile users run, and from a clean checkout on a 2-core machine it
# builds and runs the suite in less time than the debug profile (whose dependencies and proc
# macros build at opt-level 1 with full debug info). Plain `cargo test` works too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-ort.sh
# onnxruntime-genai and transformers.js, for the package tests (pinned, under .venv/; a failed
# install stops here, which eval "$(...)" alone would not)
runtimes=$(scripts/runtimes.sh)
eval "$runtimes"
exec cargo test --release --no-fail-fast "$@"
