#!/usr/bin/env bash
# Sweep fan-out on the CPU: bash benches/fan_out.sh   (from anywhere; ~10 min on 2 shared cores)
#
# An 8-value `eval --sweep` of the 100m checkpoint (benches/make_checkpoint.py 100m: 12 layers)
# steered at blocks.9.hook_resid_post (a random SAE, benches/make_sae.py; 10 of 12 layers below the
# hook, the seed's 21 of 26 for gemma-2-2b), on bench_mmlu 0-shot and 5-shot (--limit LIMIT
# questions per subject), timed as:
#   fan-out   eval --sweep (the default): below the hook once per batch, above it once per value
#   passes    eval --sweep --no-fan-out: one full pass per value
# Both runs' per-value samples are compared (largest loglikelihood difference, differing greedy
# flags). The arithmetic floor of fan-out, in forwards of the whole model: (10 + 8 * 2) / 12 = 2.17
# instead of 8, a 3.7x ratio at most (the LM head and the scoring are above the hook too).
# Appends one JSON object per case to benches/results/fan_out.jsonl (previous file kept as .prev).
#
# Knobs: BENCH_TMP (checkpoint and models, default ${TMPDIR:-/tmp}/sae-onnx-bench), BENCH_PYTHON
# (numpy, safetensors, torch, transformers: default python3), SAE_ONNX (default
# target/release/sae-onnx), LIMIT (default 10), EVAL_BS (default 16), SHOTS (default "0 5").
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${BENCH_TMP:-${TMPDIR:-/tmp}/sae-onnx-bench}
PY=${BENCH_PYTHON:-python3}
BIN=${SAE_ONNX:-target/release/sae-onnx}
LIMIT=${LIMIT:-10}
EVAL_BS=${EVAL_BS:-16}
SHOTS=${SHOTS:-0 5}
VALUES=0,4,8,16,32,64,-8,-32
mkdir -p "$T" benches/results
[ -x "$BIN" ] || cargo build --release --quiet
ckpt=$T/ckpt/gemma2-100m
[ -f "$ckpt/config.json" ] || "$PY" benches/make_checkpoint.py 100m "$ckpt" >&2
[ -f "$T/fanout/100m.onnx" ] || { mkdir -p "$T/fanout"; $BIN -q export "$ckpt" -o "$T/fanout/100m.onnx"; }
[ -f "$T/fanout/sae/steer.csv" ] || "$PY" benches/make_sae.py "$T/fanout/sae" --d-in 768 --hook blocks.9.hook_resid_post
$BIN -q patch --csv "$T/fanout/sae/steer.csv" --model "$T/fanout/100m.onnx" -o "$T/fanout/sweep.onnx" \
    --sweepable --force >/dev/null
out=benches/results/fan_out.jsonl
[ -f "$out" ] && mv "$out" benches/results/fan_out.prev.jsonl
seconds() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>"$T/fanout/last.log" || { cat "$T/fanout/last.log" >&2; exit 1; }
    printf '%.2f' "$(echo "$(date +%s.%N) - $s" | bc -l)"; }
for shots in $SHOTS; do
    run() { # run NAME [FLAGS]
        rm -rf "$T/fanout/$1-$shots"
        seconds $BIN -q eval "$T/fanout/sweep.onnx" --task bench_mmlu --include-path benches/tasks \
            --num-fewshot "$shots" --limit "$LIMIT" --batch-size "$EVAL_BS" --sweep "$VALUES" \
            --output-path "$T/fanout/$1-$shots" --log-samples "${@:2}"
    }
    fan=$(run fan)
    passes=$(run passes --no-fan-out)
    agree=$("$PY" - "$T/fanout/fan-$shots" "$T/fanout/passes-$shots" <<'PY'
import glob, json, os, sys
worst, flags, docs = 0.0, 0, 0
for point in sorted(glob.glob(os.path.join(sys.argv[1], "sweep_*"))):
    other = os.path.join(sys.argv[2], os.path.basename(point))
    # Samples lie in a folder named after the model, one level down.
    for f in sorted(glob.glob(os.path.join(point, "*", "samples_*.jsonl"))):
        task = os.path.basename(f).rsplit("_", 1)[0]
        g = glob.glob(os.path.join(other, "*", task + "_*.jsonl"))[0]
        a = sorted((json.loads(l) for l in open(f)), key=lambda s: s["doc_id"])
        b = sorted((json.loads(l) for l in open(g)), key=lambda s: s["doc_id"])
        for x, y in zip(a, b):
            docs += 1
            for (lx, gx), (ly, gy) in zip(x["filtered_resps"], y["filtered_resps"]):
                worst = max(worst, abs(float(lx) - float(ly)))
                flags += gx != gy
print(json.dumps({"documents": docs, "max_abs_loglikelihood_difference": worst, "greedy_flags_differing": flags}))
PY
)
    ratio=$(echo "$passes / $fan" | bc -l | cut -c1-4)
    line="{\"shots\": $shots, \"limit_per_subject\": $LIMIT, \"values\": 8, \"batch_size\": $EVAL_BS, \"fan_out_s\": $fan, \"passes_s\": $passes, \"passes_over_fan_out\": $ratio, \"agreement\": $agree, \"cores\": $(nproc), \"load_before\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"date\": \"$(date -u '+%F %T UTC')\"}"
    echo "$line" | tee -a "$out"
done
