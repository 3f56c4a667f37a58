#!/usr/bin/env bash
# The test suite, as CI runs it: fetch ONNX Runtime 1.31.1 if it is not there yet (the tests run
# models in it), then `cargo test --release`. Extra arguments go to cargo test, e.g.
# `scripts/test.sh --test graph_edit`.
#
# --release: on a clean 2-core machine it builds and runs the suite in about two thirds of the CPU
# time of the debug profile (whose dependencies and proc macros build at opt-level 1 with full
# debug info), and the models under test run faster. Plain `cargo test` works too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-ort.sh
exec cargo test --release "$@"
