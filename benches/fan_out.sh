#!/usr/bin/env bash
# Sweep fan-out: bash benches/fan_out.sh   (from anywhere; ~10 min on 2 shared cores)
#
# An 8-value `eval --sweep` of the 100m checkpoint (benches/make_checkpoint.py 100m: 12 layers)
# steered at blocks.9.hook_resid_post (a random SAE, benches/make_sae.py; 10 of 12 layers below the
# hook, the seed's 21 of 26 for gemma-2-2b), or with PRESET=2b of gemma-2-2b's shape steered at
# blocks.20.hook_resid_post (the seed's hook; benches/gpu.sh runs it on CUDA), on bench_mmlu 0-shot
# and 5-shot (--limit LIMIT questions per subject), timed as:
#   fan-out     eval --sweep (the default): below the hook once per batch, above it once per value
#   passes      eval --sweep --no-fan-out: one full pass per value
#   kv fan-out  the same sweep on the decoding graph (export --kv-cache): each subject's shared
#   kv passes   few-shot prefix computed once below the hook (once per value above it), and the
#               same graph one pass per value (its prefixes shared within each pass)
#   lm-eval     lm-eval's own `steered` model (HF, float32, eager attention) at the same 8 values,
#               8 runs (a .pt file per value: W_dec[latent] at layers.9, the value as coefficient);
#               both the whole commands and their scoring loops alone (benches/lmeval_timed.py)
# Per value, the fan-out samples are compared with the passes' and with lm-eval's (largest
# loglikelihood difference, differing greedy flags / argmax). The arithmetic floor of fan-out, in
# forwards of the whole model: (10 + 8 * 2) / 12 = 2.17 instead of 8, a 3.7x ratio at most (the LM
# head and the scoring are above the hook too); for the 2b shape (21 + 8 * 5) / 26 = 2.35, 3.4x.
# Appends one JSON object per case to benches/results/fan_out.jsonl (the previous file kept as
# .prev), or to FAN_OUT_JSONL if set (nothing moved), with the device, shape, dtype and the load
# average.
#
# Knobs: BENCH_TMP (checkpoint and models, default ${TMPDIR:-/tmp}/sae-onnx-bench), BENCH_PYTHON
# (numpy, safetensors, torch, transformers, lm_eval: default python3; benches/setup_baselines.sh
# makes one), SAE_ONNX (default target/release/sae-onnx), LIMIT (default 10), EVAL_BS (default
# 16), SHOTS (default "0 5"), LMEVAL (default 1; 0 skips the lm-eval runs), KV (default 1; 0 skips
# the decoding graph), DEVICE (default cpu; cuda:0 for both tools), PRESET (100m or 2b, default
# 100m), DTYPE (f32 or bf16, default f32: the export's --dtype and lm-eval's dtype).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${BENCH_TMP:-${TMPDIR:-/tmp}/sae-onnx-bench}
PY=${BENCH_PYTHON:-python3}
BIN=${SAE_ONNX:-target/release/sae-onnx}
LIMIT=${LIMIT:-10}
EVAL_BS=${EVAL_BS:-16}
SHOTS=${SHOTS:-0 5}
LMEVAL=${LMEVAL:-1}
KV=${KV:-1}
DEVICE=${DEVICE:-cpu}
PRESET=${PRESET:-100m}
DTYPE=${DTYPE:-f32}
VALUES=0,4,8,16,32,64,-8,-32
case $PRESET in
    100m) ckpt=$T/ckpt/gemma2-100m layer=9 d_in=768 ;;
    2b) ckpt=$T/ckpt/gemma2-2b-tok layer=20 d_in=2304 ;; # the tiny tokenizer copied in
    *) echo "PRESET is 100m or 2b, not '$PRESET'" >&2; exit 2 ;;
esac
case $DTYPE in
    f32) torch_dtype=float32 ;;
    bf16) torch_dtype=bfloat16 ;;
    *) echo "DTYPE is f32 or bf16, not '$DTYPE'" >&2; exit 2 ;;
esac
F=$T/fanout/$PRESET-$DTYPE
mkdir -p "$F" benches/results
[ -x "$BIN" ] || cargo build --release --quiet
[ -f "$ckpt/config.json" ] || "$PY" benches/make_checkpoint.py "$PRESET" "$ckpt" --with-tokenizer >&2
[ -f "$F/sae/steer.csv" ] || "$PY" benches/make_sae.py "$F/sae" --d-in "$d_in" --hook "blocks.$layer.hook_resid_post"
graphs=(base); [ "$KV" = 1 ] && graphs+=(kv)
for graph in "${graphs[@]}"; do
    flags=(--dtype "$DTYPE"); [ "$graph" = kv ] && flags+=(--kv-cache)
    [ -f "$F/$graph.onnx" ] || $BIN -q export "$ckpt" -o "$F/$graph.onnx" "${flags[@]}"
    $BIN -q patch --csv "$F/sae/steer.csv" --model "$F/$graph.onnx" -o "$F/sweep.$graph.onnx" \
        --sweepable --force >/dev/null
done
if [ "$LMEVAL" = 1 ]; then
    # lm-eval's `steered` .pt format: {hookpoint: {steering_vector, steering_coefficient, action,
    # bias, head_index}}; hookpoints are module names under the HF base model (layers.9 is
    # blocks.9.hook_resid_post: the output of decoder layer 9).
    "$PY" - "$F" "$VALUES" "layers.$layer" <<'PY'
import os, sys
import torch
from safetensors.torch import load_file
out, values, hookpoint = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
row = load_file(os.path.join(out, "sae", "sae", "sae_weights.safetensors"))["W_dec"][3].clone()
for v in values:
    cfg = {hookpoint: {"steering_vector": row, "steering_coefficient": float(v), "action": "add",
                       "bias": None, "head_index": None}}
    torch.save(cfg, os.path.join(out, f"steer_{v}.pt"))
PY
fi
out=benches/results/fan_out.jsonl
if [ -n "${FAN_OUT_JSONL:-}" ]; then out=$FAN_OUT_JSONL; elif [ -f "$out" ]; then mv "$out" benches/results/fan_out.prev.jsonl; fi
seconds() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>"$F/last.log" || { cat "$F/last.log" >&2; exit 1; }
    printf '%.2f' "$(echo "$(date +%s.%N) - $s" | bc -l)"; }
for shots in $SHOTS; do
    run() { # run NAME MODEL [FLAGS]
        rm -rf "$F/$1-$shots"
        seconds $BIN -q eval "$2" --task bench_mmlu --include-path benches/tasks --device "$DEVICE" \
            --num-fewshot "$shots" --limit "$LIMIT" --batch-size "$EVAL_BS" --sweep "$VALUES" \
            --output-path "$F/$1-$shots" --log-samples "${@:3}"
    }
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    fan=$(run fan "$F/sweep.base.onnx")
    passes=$(run passes "$F/sweep.base.onnx" --no-fan-out)
    agree() { "$PY" - "$@" <<'PY'
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
    }
    ratio() { echo "$1 / $2" | bc -l | cut -c1-5; }
    line="{\"device\": \"$DEVICE\", \"preset\": \"$PRESET\", \"dtype\": \"$DTYPE\", \"shots\": $shots, \"limit_per_subject\": $LIMIT, \"values\": 8, \"batch_size\": $EVAL_BS, \"fan_out_s\": $fan, \"passes_s\": $passes, \"passes_over_fan_out\": $(ratio "$passes" "$fan"), \"agreement\": $(agree "$F/fan-$shots" "$F/passes-$shots")"
    if [ "$KV" = 1 ]; then
        kv_fan=$(run kv-fan "$F/sweep.kv.onnx")
        kv_passes=$(run kv-passes "$F/sweep.kv.onnx" --no-fan-out)
        line+=", \"kv_fan_out_s\": $kv_fan, \"kv_passes_s\": $kv_passes, \"kv_passes_over_kv_fan_out\": $(ratio "$kv_passes" "$kv_fan"), \"passes_over_kv_fan_out\": $(ratio "$passes" "$kv_fan"), \"kv_agreement\": $(agree "$F/kv-fan-$shots" "$F/kv-passes-$shots")"
    fi
    if [ "$LMEVAL" = 1 ]; then
        lm_total=0 lm_scoring=0 worst=""
        for v in ${VALUES//,/ }; do
            o=$F/lmeval-$shots/$v
            rm -rf "$o"
            s=$(BENCH_SCORING_JSON="$F/scoring.json" seconds "$PY" benches/lmeval_timed.py run --model steered \
                --model_args "pretrained=$ckpt,steer_path=$F/steer_$v.pt,dtype=$torch_dtype,attn_implementation=eager" \
                --tasks bench_mmlu --include_path benches/tasks --num_fewshot "$shots" --limit "$LIMIT" \
                --batch_size "$EVAL_BS" --device "$DEVICE" --output_path "$o" --log_samples)
            lm_total=$(echo "$lm_total + $s" | bc -l)
            lm_scoring=$(echo "$lm_scoring + $("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["scoring_s"])' "$F/scoring.json")" | bc -l)
            # Ours (fanned out) against lm-eval at this value: the correctness half of the ratio.
            worst+="$(python3 benches/compare_samples.py "$F/fan-$shots/sweep_steer.coeff.0_$v" "$o" \
                --name "value $v" --tol 1e-4 || true); "
        done
        line+=", \"lm_eval_8_runs_s\": $(printf '%.2f' "$lm_total"), \"lm_eval_8_scoring_loops_s\": $(printf '%.2f' "$lm_scoring"), \"lm_eval_over_fan_out\": $(ratio "$lm_total" "$fan"), \"lm_eval_scoring_over_fan_out\": $(ratio "$lm_scoring" "$fan"), \"ours_vs_lm_eval\": \"${worst%; }\""
    fi
    line+=", \"cores\": $(nproc), \"load_before\": \"$load_before\", \"load_after\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"date\": \"$(date -u '+%F %T UTC')\"}"
    echo "$line" | tee -a "$out"
done
