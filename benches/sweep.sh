#!/usr/bin/env bash
# What a study's work units cost besides scoring: bash benches/sweep.sh   (from anywhere, ~3 min)
#
# On the demo model (models/tiny-gemma2, so scoring is nearly free and the fixed costs show) and
# benches/tasks/bench_mmlu (200 questions, 5-shot), four steering coefficients, timed as:
#   one-process   eval --sweep 0,12,24,48: one process, one session, requests built once (baseline)
#   grid-units    sweep GRID --worker 0/1, 4 units (one per coefficient): a process's share of
#                 work in units, each preparing the task and opening a session
#   grid-shards   the same grid with shards: 4 (16 units: every shard builds all 200 prompts)
#   report        sweep --report of grid-shards: 4 merges of 4 shards, paired tests, a plot
#   merge         merge of one coefficient's 4 shards alone
# Writes benches/results/sweep.jsonl (median of RUNS, default 3) and prints the per-unit figures.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
BIN=${SAE_ONNX:-target/release/sae-onnx}
RUNS=${RUNS:-3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
[ -x "$BIN" ] || cargo build --release --quiet
$BIN -q export models/tiny-gemma2 -o "$T/tiny.onnx" >/dev/null
$BIN -q patch --csv models/tiny-gemma2/steer.csv --model "$T/tiny.onnx" -o "$T/sweepable.onnx" --sweepable >/dev/null
grid() { # grid FILE SHARDS OUTPUT
  cat > "$1" <<YAML
model: $T/tiny.onnx
plans:
  - {name: demo, csv: $REPO/models/tiny-gemma2/steer.csv, coefficients: [0, 12, 24, 48]}
tasks: [bench_mmlu]
eval: {num_fewshot: 5, batch_size: 16, include_path: [$REPO/benches/tasks]}
shards: $2
output: $3
YAML
}
seconds() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; printf '%.3f' "$(echo "$(date +%s.%N) - $s" | bc -l)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A times
for run in $(seq "$RUNS"); do
  rm -rf "$T/out" "$T"/g*
  times[one]+=" $(seconds $BIN -q eval "$T/sweepable.onnx" --task bench_mmlu --include-path benches/tasks \
      --num-fewshot 5 --sweep 0,12,24,48 --output-path "$T/out" --log-samples)"
  grid "$T/g1.yaml" 1 "$T/g1"
  times[units]+=" $(seconds $BIN -q sweep "$T/g1.yaml" --worker 0/1)"
  grid "$T/g4.yaml" 4 "$T/g4"
  times[shards]+=" $(seconds $BIN -q sweep "$T/g4.yaml" --worker 0/1)"
  times[report]+=" $(seconds $BIN -q sweep "$T/g4.yaml" --report --resamples 1000)"
  times[merge]+=" $(seconds $BIN -q merge "$T"/g4/units/tiny/demo/c24/bench_mmlu/shard*of4 --output-path "$T/m$run")"
done
out=benches/results/sweep.jsonl
[ -f "$out" ] && mv "$out" benches/results/sweep.prev.jsonl
for k in one units shards report merge; do
  # shellcheck disable=SC2086
  m=$(median ${times[$k]})
  # shellcheck disable=SC2086
  echo "{\"case\": \"$k\", \"median_s\": $m, \"runs_s\": [$(echo ${times[$k]} | tr ' ' ',')]}" >> "$out"
done
cat "$out"
one=$(median ${times[one]}); units=$(median ${times[units]}); shards=$(median ${times[shards]})
echo "per unit: $(echo "$units / 4" | bc -l | cut -c1-5) s (4 units, 1 coefficient each); per sharded unit: $(echo "$shards / 16" | bc -l | cut -c1-5) s"
echo "grid-units / one-process: $(echo "$units / $one" | bc -l | cut -c1-4)x; grid-shards / one-process: $(echo "$shards / $one" | bc -l | cut -c1-4)x"
