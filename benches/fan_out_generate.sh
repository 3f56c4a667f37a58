#!/usr/bin/env bash
# Sweep fan-out of generate_until on the CPU: bash benches/fan_out_generate.sh   (from anywhere)
#
# An 8-value `eval --sweep` of the 100m checkpoint's decoding graph (benches/make_checkpoint.py
# 100m: 12 layers, export --kv-cache) steered at blocks.9.hook_resid_post (a random SAE,
# benches/make_sae.py), on benches/tasks/bench_gen.yaml (a generate_until task: LIMIT prompts of
# ~150-250 tokens 3-shot, max_gen_toks 32), timed as:
#   fan-out   eval --sweep (the default): each prompt prefilled below the hook once and above it
#             once per value, then the 8 values decoded together as 8 rows of one batch
#   passes    eval --sweep --no-fan-out: one full pass per value, one row at a time
# Per value, the fan-out samples are compared with the passes' (documents whose generation
# differs). Appends one JSON object to benches/results/fan_out_generate.jsonl, with the load
# average before and after.
#
# Knobs: BENCH_TMP (checkpoint and models, default ${TMPDIR:-/tmp}/sae-onnx-bench), BENCH_PYTHON
# (numpy, safetensors, torch for the checkpoint and SAE: default python3), SAE_ONNX (default
# target/release/sae-onnx), LIMIT (default 10), SHOTS (default 3), VALUES (default
# 0,32,64,96,128,192,256,512: on the random checkpoint the generations change between 64 and 512).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${BENCH_TMP:-${TMPDIR:-/tmp}/sae-onnx-bench}
PY=${BENCH_PYTHON:-python3}
BIN=${SAE_ONNX:-target/release/sae-onnx}
LIMIT=${LIMIT:-10}
SHOTS=${SHOTS:-3}
VALUES=${VALUES:-0,32,64,96,128,192,256,512}
mkdir -p "$T/fanout" benches/results
[ -x "$BIN" ] || cargo build --release --quiet
ckpt=$T/ckpt/gemma2-100m
[ -f "$ckpt/config.json" ] || "$PY" benches/make_checkpoint.py 100m "$ckpt" >&2
[ -f "$T/fanout/100m.kv.onnx" ] || $BIN -q export "$ckpt" -o "$T/fanout/100m.kv.onnx" --kv-cache
[ -f "$T/fanout/sae/steer.csv" ] || "$PY" benches/make_sae.py "$T/fanout/sae" --d-in 768 --hook blocks.9.hook_resid_post
$BIN -q patch --csv "$T/fanout/sae/steer.csv" --model "$T/fanout/100m.kv.onnx" \
    -o "$T/fanout/sweep.kv.onnx" --sweepable --force >/dev/null
seconds() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>"$T/fanout/last.log" || { cat "$T/fanout/last.log" >&2; exit 1; }
    printf '%.2f' "$(echo "$(date +%s.%N) - $s" | bc -l)"; }
run() { # run NAME [FLAGS]
    rm -rf "$T/fanout/$1"
    seconds $BIN -q eval "$T/fanout/sweep.kv.onnx" --task bench_gen --include-path benches/tasks \
        --num-fewshot "$SHOTS" --limit "$LIMIT" --sweep "$VALUES" \
        --output-path "$T/fanout/$1" --log-samples "${@:2}"
}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
fan=$(run gen-fan)
grep -h "one pass per value" "$T/fanout/last.log" >&2 && { echo "the sweep did not fan out" >&2; exit 1; }
passes=$(run gen-passes --no-fan-out)
agreement=$(python3 - "$T/fanout/gen-fan" "$T/fanout/gen-passes" <<'PY'
import glob, json, os, sys
docs, differing, distinct = 0, 0, set()
for point in sorted(glob.glob(os.path.join(sys.argv[1], "sweep_*"))):
    other = os.path.join(sys.argv[2], os.path.basename(point))
    for f in sorted(glob.glob(os.path.join(point, "*", "samples_*.jsonl"))):
        task = os.path.basename(f).rsplit("_", 1)[0]
        g = glob.glob(os.path.join(other, "*", task + "_*.jsonl"))[0]
        a = sorted((json.loads(l) for l in open(f)), key=lambda s: s["doc_id"])
        b = sorted((json.loads(l) for l in open(g)), key=lambda s: s["doc_id"])
        for x, y in zip(a, b):
            docs += 1
            differing += x["resps"] != y["resps"]
            distinct.add(json.dumps(x["resps"]))
print(json.dumps({"generations": docs, "differing_from_passes": differing, "distinct_generations": len(distinct)}))
PY
)
ratio() { echo "$1 / $2" | bc -l | cut -c1-5; }
line="{\"task\": \"bench_gen\", \"shots\": $SHOTS, \"limit\": $LIMIT, \"values\": \"$VALUES\", \"fan_out_s\": $fan, \"passes_s\": $passes, \"passes_over_fan_out\": $(ratio "$passes" "$fan"), \"agreement\": $agreement"
line+=", \"cores\": $(nproc), \"load_before\": \"$load_before\", \"load_after\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"date\": \"$(date -u '+%F %T UTC')\"}"
echo "$line" | tee -a benches/results/fan_out_generate.jsonl
