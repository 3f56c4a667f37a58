#!/usr/bin/env bash
# GPU benchmark: sae-onnx on ONNX Runtime's CUDA provider against lm-eval's Hugging Face backend and
# transformers' generate on the same GPU, with numerics checks. Run from the repository root:
#
#   bash benches/gpu.sh STAGE...      STAGE: setup lmeval exports reference ours (or all), fanout, profile, or unpack
#
# The stages exist because a lent GPU machine here has no network and receives files in parts
# (benches/gpu_bundle.sh makes them under .gpu/); each stage is idempotent and keeps its state in
# $BENCH_TMP (default ${TMPDIR:-/tmp}/sae-onnx-bench), so the stages can run in successive calls while the
# machine stays up. On a machine with everything installed, `all` runs them in order.
#
#  setup      Python packages from .gpu/p0/whl (lm-eval 0.4.13 and transformers 4.57.6, the reference
#             pins) into $BENCH_TMP/site unless `import lm_eval` already works; ONNX Runtime GPU
#             1.31.1 from .gpu/p*/ (ORT_DIR, or ORT_DYLIB_PATH if set); the sae-onnx binary from
#             .gpu/ or target/release; checkpoints (benches/make_checkpoint.py): the ~100M model and
#             gemma-2-2b's shape with its 256000-row LM head and the tiny tokenizer ("2b").
#  lmeval     lm-eval hf on cuda:0, eager attention (keeps Gemma 2's softcap), 2b in float32 and
#             bfloat16, LMEVAL_RUNS (2) runs each, timed phases via benches/lmeval_timed.py.
#  exports    sae-onnx export of 100m (f32) and 2b (f32, bf16, bf16 --ops ort, f16, a bf16 decoding
#             graph for shared 5-shot prefixes; with WITH_GENERATE=1 an f32 decoding graph).
#  reference  sae-onnx on the CPU provider for the 100m model (the numerics reference).
#  ours       sae-onnx eval on cuda:0 (RUNS (3) each; f32 with and without --tf32, bf16 with
#             portable and fused norms, f16), numerics checks, decode speed against transformers
#             generate (WITH_GENERATE=1), and the table, printed last.
#  fanout     benches/fan_out.sh on cuda:0: an 8-value sweep of the 2b shape steered at layer 20 of 26,
#             fanned out against one pass per value, full-sequence and decoding graphs, for each dtype
#             in FANOUT_DTYPES (bf16 f32), SHOTS-shot, FANOUT_LIMIT (5) questions per subject;
#             FANOUT_LMEVAL=1 adds lm-eval's `steered` model 8 times. Results: gpu.fan_out.jsonl.
#  profile    ONNX Runtime's per-operator profile (SAE_ONNX_ORT_PROFILE) of 16 documents per model in
#             PROFILE_MODELS, summed by operator and provider (benches/ort_profile_summary.py).
# The task: benches/tasks bench_mmlu (200 MMLU-format questions) 5-shot, as MMLU is usually run,
# batch size EVAL_BS (32) for both tools. Results: benches/results/gpu.jsonl (+ gpu.logs/,
# gpu.numerics.txt, gpu.generate.jsonl); with $OUT set, copies of them land there too.
# Exit code: non-zero if a numerics check failed.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${BENCH_TMP:-${TMPDIR:-/tmp}/sae-onnx-bench}
RUNS=${RUNS:-3}
LMEVAL_RUNS=${LMEVAL_RUNS:-2}
EVAL_BS=${EVAL_BS:-32}
SHOTS=${SHOTS:-5}
RES=${BENCH_RESULTS:-$REPO/benches/results}
OUT_JSONL=$RES/gpu.jsonl
ORT_DIR=${ORT_DIR:-$T/ort}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
export PYTHONUNBUFFERED=1
mkdir -p "$T/eval" "$RES"
[ -d "$T/site" ] && export PYTHONPATH=$T/site${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
CK100=$T/ckpt/gemma2-100m
CK2B=$T/ckpt/gemma2-2b-tok
o=$T/eval/out
common=(--task bench_mmlu --include-path benches/tasks --num-fewshot "$SHOTS" --batch-size "$EVAL_BS" --log-samples)

nvlibs() { # the folders of the nvidia-* wheels' libraries (CUDA 13, cuDNN 9) of this Python
    "$PY" - <<'EOF'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for so in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
EOF
}

runtime_env() {
    BIN=${BIN:-$T/bin/sae-onnx}
    [ -x "$BIN" ] || BIN=$REPO/target/release/sae-onnx
    export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ORT_DIR/libonnxruntime.so.1.31.1}
    local nv
    nv=$(nvlibs)
    export LD_LIBRARY_PATH=$nv${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

measure() { "$PY" benches/measure.py "$@" || echo "   (recorded as failed: rc $?)" >&2; }

unpack() { # the parts that gpu_bundle.sh made, once each
    if [ -d .gpu/p0/whl ] && ! "$PY" -c 'import lm_eval' 2>/dev/null && [ ! -d "$T/site" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$T/site" .gpu/p0/whl/*.whl
        export PYTHONPATH=$T/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    mkdir -p "$ORT_DIR" "$T/bin"
    if [ -f .gpu/p0/ort-core.tar.xz ] && [ ! -f "$ORT_DIR/libonnxruntime.so.1.31.1" ]; then
        tar -xJf .gpu/p0/ort-core.tar.xz -C "$ORT_DIR"
    fi
    if [ -f .gpu/p0/sae-onnx.xz ] && [ ! -x "$T/bin/sae-onnx" ]; then
        xz -dc .gpu/p0/sae-onnx.xz > "$T/bin/sae-onnx.part" && chmod +x "$T/bin/sae-onnx.part"
        mv "$T/bin/sae-onnx.part" "$T/bin/sae-onnx"
    fi
    local parts n
    parts=$(ls .gpu/p*/cuda.xz.* 2>/dev/null | sort -t/ -k3 || true)
    n=$(cat .gpu/p0/cuda.parts 2>/dev/null || echo 0)
    if [ ! -f "$ORT_DIR/libonnxruntime_providers_cuda.so" ] && [ -n "$parts" ] && [ "$(echo "$parts" | wc -l)" = "$n" ]; then
        # shellcheck disable=SC2086
        cat $parts | xz -dc > "$ORT_DIR/cuda.part"
        mv "$ORT_DIR/cuda.part" "$ORT_DIR/libonnxruntime_providers_cuda.so"
    fi
    echo "bundle: site=$([ -d "$T/site" ] && echo yes || echo no) ort-core=$([ -f "$ORT_DIR/libonnxruntime.so.1.31.1" ] && echo yes || echo no)" \
        "cuda-provider=$([ -f "$ORT_DIR/libonnxruntime_providers_cuda.so" ] && echo yes || echo "no ($(echo "$parts" | grep -c . || true)/$n parts)")"
}

stage_unpack() { :; } # the parts that arrived in this call, nothing else

stage_setup() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
    "$PY" -c 'import torch, transformers, lm_eval; print("torch", torch.__version__, torch.cuda.get_device_name(0), "| transformers", transformers.__version__, "| lm_eval", lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?")'
    [ -f "$CK100/config.json" ] || "$PY" benches/make_checkpoint.py 100m "$CK100"
    [ -f "$CK2B/config.json" ] || "$PY" benches/make_checkpoint.py 2b "$CK2B" --with-tokenizer
    RES=$RES "$PY" - <<'EOF'
import json, os, time, torch
rates = {}
a = torch.randn(8192, 8192, device="cuda"); b = torch.randn(8192, 8192, device="cuda")
for dt, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
    x, y = a.to(dt), b.to(dt)
    for _ in range(3): x @ y
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): x @ y
    torch.cuda.synchronize(); s = (time.perf_counter() - t) / 10
    rates[name] = 2 * 8192**3 / s / 1e12
    print(f"matmul rate {name}: {rates[name]:.1f} TFLOP/s (8192^3, torch, TF32 off)")
json.dump(rates, open(os.path.join(os.environ["RES"], "gpu.matmul.json"), "w"))
EOF
}

lmeval_run() { # NAME CKPT DTYPE
    measure --out "$OUT_JSONL" --name "lm-eval hf $1 bs$EVAL_BS ${SHOTS}-shot eager" --runs "$LMEVAL_RUNS" \
        --scoring "$T/eval/scoring.json" --before "rm -rf $o/lmeval-$1" --note "device cuda:0" \
        -- "$PY" benches/lmeval_timed.py run --model hf \
        --model_args "pretrained=$2,dtype=$3,attn_implementation=eager" \
        --tasks bench_mmlu --include_path benches/tasks --num_fewshot "$SHOTS" --batch_size "$EVAL_BS" \
        --device cuda:0 --output_path "$o/lmeval-$1" --log_samples
}

stage_lmeval() {
    lmeval_run 2b-f32 "$CK2B" float32
    lmeval_run 2b-bf16 "$CK2B" bfloat16
}

stage_exports() {
    runtime_env
    [ -f "$T/eval/100m.onnx" ] || "$BIN" -q export "$CK100" -o "$T/eval/100m.onnx" --force
    [ -f "$T/eval/2b-f32.onnx" ] || "$BIN" -q export "$CK2B" -o "$T/eval/2b-f32.onnx" --dtype f32 --force
    [ -f "$T/eval/2b-bf16.onnx" ] || "$BIN" -q export "$CK2B" -o "$T/eval/2b-bf16.onnx" --dtype bf16 --ops portable --force
    # Variants: fused norms (--ops ort) in bf16, and float16 (the CUDA provider's widest coverage).
    [ -f "$T/eval/2b-bf16-ort.onnx" ] || "$BIN" -q export "$CK2B" -o "$T/eval/2b-bf16-ort.onnx" --dtype bf16 --ops ort --force
    [ -f "$T/eval/2b-f16.onnx" ] || "$BIN" -q export "$CK2B" -o "$T/eval/2b-f16.onnx" --dtype f16 --force
    # Decoding graph: eval computes each subject's shared 5-shot prefix once.
    [ -f "$T/eval/2b-bf16-kv.onnx" ] || "$BIN" -q export "$CK2B" -o "$T/eval/2b-bf16-kv.onnx" --dtype bf16 --kv-cache --force
    if [ -n "${WITH_GENERATE:-}" ] && [ ! -f "$T/eval/2b-f32-kv.onnx" ]; then
        "$BIN" -q export "$CK2B" -o "$T/eval/2b-f32-kv.onnx" --kv-cache --force
    fi
    ls -la "$T/eval"
}

stage_reference() {
    runtime_env
    rm -rf "$o/cpu-100m"
    "$BIN" -q eval "$T/eval/100m.onnx" "${common[@]}" --device cpu --output-path "$o/cpu-100m" | tail -3
}

ours_run() { # MODEL [LABEL EXTRA_ARGS...]
    local model=$1 label=${2:-$1}
    shift $(( $# < 2 ? $# : 2 ))
    measure --out "$OUT_JSONL" --name "ours eval $label bs$EVAL_BS ${SHOTS}-shot" --runs "$RUNS" \
        --before "rm -rf $o/cuda-$label" --note "device cuda:0 $*" \
        -- "$BIN" eval "$T/eval/$model.onnx" "${common[@]}" --device cuda:0 --output-path "$o/cuda-$label" "$@"
}

compare() { # A B NAME TOL
    "$PY" benches/compare_samples.py "$1" "$2" --name "$3" --tol "$4" >> "$RES/gpu.numerics.txt"
}

stage_ours() {
    runtime_env
    status=0
    ours_run 100m
    ours_run 2b-f32
    ours_run 2b-f32 2b-f32-tf32 --tf32
    ours_run 2b-bf16
    ours_run 2b-bf16-ort
    ours_run 2b-f16
    ours_run 2b-bf16-kv
    : > "$RES/gpu.numerics.txt"
    compare "$o/cuda-100m" "$o/cpu-100m" "100m f32: sae-onnx cuda vs sae-onnx cpu" 1e-3 || status=1
    compare "$o/cuda-2b-f32" "$o/lmeval-2b-f32" "2b f32: sae-onnx cuda vs lm-eval cuda" 1e-3 || status=1
    compare "$o/cuda-2b-f32-tf32" "$o/lmeval-2b-f32" "2b f32 --tf32: sae-onnx cuda vs lm-eval cuda f32" 3e-2 || status=1
    # Half precision against the float32 reference: the size of the rounding, for both tools.
    for v in 2b-bf16 2b-bf16-ort 2b-f16 2b-bf16-kv; do
        compare "$o/cuda-$v" "$o/lmeval-2b-f32" "$v: sae-onnx cuda vs lm-eval f32" 1 || status=1
    done
    compare "$o/lmeval-2b-bf16" "$o/lmeval-2b-f32" "2b bf16: lm-eval bf16 vs lm-eval f32" 1 || true
    if [ -n "${WITH_GENERATE:-}" ]; then
        "$PY" benches/generate.py "$CK2B" --device cuda:0 --onnx "$T/eval/2b-f32-kv.onnx" --binary "$BIN" --runs 2 --new 64 \
            >> "$RES/gpu.generate.jsonl" 2> "$RES/gpu.generate.log" || echo "generate bench failed: see gpu.generate.log" >&2
        tail -1 "$RES/gpu.generate.jsonl" 2>/dev/null || true
    fi
    "$PY" benches/report.py --gpu "$RES"
    return $status
}

stage_fanout() {
    runtime_env
    local dt
    for dt in ${FANOUT_DTYPES:-bf16 f32}; do
        DEVICE=cuda:0 PRESET=2b DTYPE=$dt SAE_ONNX=$BIN BENCH_PYTHON=$PY SHOTS=$SHOTS EVAL_BS=$EVAL_BS \
            LIMIT=${FANOUT_LIMIT:-5} LMEVAL=${FANOUT_LMEVAL:-0} FAN_OUT_JSONL=$RES/gpu.fan_out.jsonl \
            bash benches/fan_out.sh
    done
}

stage_profile() { # ONNX Runtime's per-operator profile of a few documents, summed by operator and provider
    runtime_env
    local v
    for v in ${PROFILE_MODELS:-2b-bf16 2b-bf16-ort 2b-f32}; do
        rm -rf "$T/profile-$v"* "$o/profile-$v"
        SAE_ONNX_ORT_PROFILE=$T/profile-$v "$BIN" -q eval "$T/eval/$v.onnx" "${common[@]}" --limit 8 \
            --device cuda:0 --output-path "$o/profile-$v" > /dev/null
        echo "## $v" >> "$RES/gpu.profile.txt"
        "$PY" benches/ort_profile_summary.py "$(ls -t "$T/profile-$v"*.json | head -1)" >> "$RES/gpu.profile.txt"
    done
    cat "$RES/gpu.profile.txt"
}

save_out() { # copies for the device tool's $OUT (flat: it returns at most 8 files)
    [ -n "${OUT:-}" ] || return 0
    for f in gpu.jsonl gpu.numerics.txt gpu.generate.jsonl gpu.matmul.json gpu.profile.txt gpu.fan_out.jsonl; do
        [ -f "$RES/$f" ] && cp "$RES/$f" "$OUT/" || true
    done
    # The logs in one archive, the eighth file.
    local logs=()
    for f in gpu.logs gpu.generate.log; do [ -e "$RES/$f" ] && logs+=("$f"); done
    [ ${#logs[@]} -gt 0 ] && tar -czf "$OUT/gpu.logs.tgz" -C "$RES" "${logs[@]}" || true
}
trap save_out EXIT

unpack
rc=0
stages=("$@")
[ "${stages[0]:-all}" = all ] && stages=(setup lmeval exports reference ours)
for s in "${stages[@]}"; do
    echo "== stage $s ($(date -u +%H:%M:%S))"
    "stage_$s" || rc=$?
done
exit $rc
