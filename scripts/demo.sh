#!/usr/bin/env bash
# The whole pipeline on the bundled demo model (models/tiny-gemma2: a tiny Gemma 2 with random
# weights, its tokenizer, a random SAE and a steer.csv): export to ONNX, steer it, evaluate base
# and steered on a small multiple-choice task, sweep the steering coefficient and test the
# differences, run the sweep as a sharded grid on two workers, generate from both, package the
# steered model for other runtimes, and inspect it.
# Fetches ONNX Runtime 1.31.1 (CPU) from PyPI if it is missing. Output goes to demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-ort.sh
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/sae-onnx"
out=demo-out
mkdir -p "$out"

echo "== export (safetensors -> ONNX, pure Rust)"
$bin export models/tiny-gemma2 -o "$out/tiny-gemma2.onnx" --force

echo "== patch (steer.csv -> constant Add at blocks.2.hook_resid_post)"
$bin patch --csv models/tiny-gemma2/steer.csv --model "$out/tiny-gemma2.onnx" -o "$out/tiny-gemma2.steered.onnx" --force

echo "== eval base"
$bin eval "$out/tiny-gemma2.onnx" --task models/tiny-gemma2/demo_mc.yaml --output-path "$out/results" --log-samples
echo "== eval steered"
$bin eval "$out/tiny-gemma2.steered.onnx" --task models/tiny-gemma2/demo_mc.yaml --output-path "$out/results" --log-samples

echo "== sweep: the coefficient at 0, 50, 100 and 150 in one session, then paired tests and a plot"
$bin patch --csv models/tiny-gemma2/steer.csv --model "$out/tiny-gemma2.onnx" -o "$out/tiny-gemma2.sweepable.onnx" --sweepable --force
rm -rf "$out/sweep"
$bin eval "$out/tiny-gemma2.sweepable.onnx" --task models/tiny-gemma2/demo_mc.yaml --sweep 0,50,100,150 \
    --output-path "$out/sweep" --log-samples
$bin compare "$out"/sweep/sweep_* --plot "$out/sweep.png" --force

echo "== study: the same steering as a grid (deploy/demo-grid.yaml) of 8 units, each coefficient's"
echo "   documents in 2 shards, run by 2 workers at once, then one report (table, tests, plot)"
rm -rf "$out/study"
$bin -q sweep deploy/demo-grid.yaml --worker 0/2 &
first=$!
$bin -q sweep deploy/demo-grid.yaml --worker 1/2
wait "$first"
$bin sweep deploy/demo-grid.yaml --status
$bin sweep deploy/demo-grid.yaml --report
cat "$out/study/report/results.csv"

echo "== generate: base and steered, side by side (decoding graphs with a KV cache)"
$bin export models/tiny-gemma2 -o "$out/tiny-gemma2.kv.onnx" --kv-cache --force
$bin patch --csv models/tiny-gemma2/steer.csv --model "$out/tiny-gemma2.kv.onnx" -o "$out/tiny-gemma2.kv.steered.onnx" --force
$bin generate "$out/tiny-gemma2.kv.steered.onnx" --compare "$out/tiny-gemma2.kv.onnx" --prompt "The dog sees the" --max-new-tokens 12

echo "== package: the steered decoding graph for onnxruntime-genai and transformers.js (weights hard-linked)"
$bin package "$out/tiny-gemma2.kv.steered.onnx" --format genai -o "$out/package-genai" --force
$bin package "$out/tiny-gemma2.kv.steered.onnx" --format transformers.js -o "$out/package-js" --force

echo "== inspect steered"
$bin inspect "$out/tiny-gemma2.steered.onnx"
