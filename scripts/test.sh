#!/usr/bin/env bash
# The test suite, as CI runs it: fetch ONNX Runtime 1.31.1 if it is not there yet (the tests run
# models in it), then `cargo test --release`, reporting every failing test binary rather than
# stopping at the first. Extra arguments go to cargo test: `scripts/test.sh --test it graph_edit`.
#
# Why --release: it tests the profile users run, and from a clean checkout on a 2-core machine it
# builds and runs the suite in less time than the debug profile (whose dependencies and proc
# macros build at opt-level 1 with full debug info). Plain `cargo test` works too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-ort.sh
exec cargo test --release --no-fail-fast "$@"
