#!/usr/bin/env bash
# GPU eval benchmark (NOT YET RUN: no CUDA machine so far). One prepared script, run from anywhere:
#
#   bash benches/gpu.sh            on a Linux x86_64 machine with an NVIDIA GPU (CUDA 13 driver)
#
# What it does, in order (about 10 minutes on one H100, most of it lm-eval start-up):
#  1. venv GPU_VENV (/tmp/sae-onnx-gpu-venv), unless it exists: the reference pins of
#     tests/fixtures/requirements.txt (torch 2.15 is the CUDA 13 build) with onnxruntime-gpu==1.31.1
#     in place of onnxruntime. Needs PyPI, or a GPU_VENV made beforehand.
#  2. our binary: BIN, else target/release/sae-onnx, built with cargo if missing.
#     ONNX Runtime: the venv's onnxruntime-gpu library (ORT_DYLIB_PATH); CUDA/cuDNN from the venv's
#     nvidia-* wheels (LD_LIBRARY_PATH), as `sae-onnx eval --device cuda` explains when it fails.
#  3. checkpoints (benches/make_checkpoint.py 100m) and ONNX exports (f32) of tiny and 100m.
#  4. per model: CPU reference of sae-onnx (--log-samples); sae-onnx --device cuda:0 and lm-eval hf
#     --device cuda:0 (eager and sdpa), each RUNS (3) times through benches/measure.py, batch size
#     EVAL_BS (16). Results: benches/results/gpu.jsonl (+ .logs/).
#  5. numerics: every choice's loglikelihood, sae-onnx cuda vs sae-onnx cpu and vs lm-eval cuda
#     (eager), within 1e-3 (benches/compare_samples.py) -> benches/results/gpu.numerics.txt.
#  6. prints the table last (benches/report.py --gpu).
# Exit code: non-zero if a numerics check failed.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${BENCH_TMP:-/tmp/sae-onnx-bench}
VENV=${GPU_VENV:-/tmp/sae-onnx-gpu-venv}
RUNS=${RUNS:-3}
EVAL_BS=${EVAL_BS:-16}
BIN=${BIN:-$REPO/target/release/sae-onnx}
RES=$REPO/benches/results
OUT=$RES/gpu.jsonl
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
mkdir -p "$T/eval" "$RES"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 1. venv
if [ ! -x "$VENV/bin/python" ]; then
    python3.11 -m venv "$VENV"
    grep -v '^onnxruntime==' tests/fixtures/requirements.txt > "$T/requirements-gpu.txt"
    echo "onnxruntime-gpu==1.31.1" >> "$T/requirements-gpu.txt"
    "$VENV/bin/pip" install -r "$T/requirements-gpu.txt"
fi
PY=$VENV/bin/python
SITE=$("$PY" -c 'import site; print(site.getsitepackages()[0])')
export ORT_DYLIB_PATH=$SITE/onnxruntime/capi/libonnxruntime.so.1.31.1
[ -f "$SITE/onnxruntime/capi/libonnxruntime_providers_cuda.so" ] || { echo "onnxruntime in $VENV is not the GPU build" >&2; exit 1; }
NVLIBS=$(find "$SITE/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, torch.cuda.get_device_name(0))'

# 2. binary
[ -x "$BIN" ] || cargo build --release

# 3. checkpoints and exports
CK100=$T/ckpt/gemma2-100m
[ -f "$CK100/config.json" ] || "$PY" benches/make_checkpoint.py 100m "$CK100"
[ -f benches/tasks/bench_mmlu.yaml ] || python3 benches/make_task.py

measure() { python3 benches/measure.py "$@" || echo "   (recorded as failed: rc $?)" >&2; }
[ -f "$OUT" ] && mv "$OUT" "$RES/gpu.prev.jsonl"
rm -rf "$RES/gpu.logs" "$RES/gpu.numerics.txt"
status=0
o=$T/eval/out
for name in tiny 100m; do
    if [ "$name" = tiny ]; then dir=$REPO/models/tiny-gemma2; else dir=$CK100; fi
    [ -f "$T/eval/$name.onnx" ] || "$BIN" -q export "$dir" -o "$T/eval/$name.onnx" --force
    common=(--task bench_mmlu --include-path benches/tasks --batch-size "$EVAL_BS" --log-samples)
    # 4. CPU reference (untimed), then the timed GPU runs
    rm -rf "$o/cpu-$name"
    "$BIN" -q eval "$T/eval/$name.onnx" "${common[@]}" --device cpu --output-path "$o/cpu-$name" > /dev/null
    measure --out "$OUT" --name "ours eval $name bs$EVAL_BS" --runs "$RUNS" --before "rm -rf $o/cuda-$name" \
        --note "device cuda:0" \
        -- "$BIN" -q eval "$T/eval/$name.onnx" "${common[@]}" --device cuda:0 --output-path "$o/cuda-$name"
    for attn in eager sdpa; do
        measure --out "$OUT" --name "lm-eval hf $name bs$EVAL_BS $attn" --runs "$RUNS" \
            --scoring "$T/eval/scoring.json" --before "rm -rf $o/lmeval-cuda-$name-$attn" --note "device cuda:0" \
            -- "$PY" benches/lmeval_timed.py run --model hf \
            --model_args "pretrained=$dir,dtype=float32,attn_implementation=$attn" \
            --tasks bench_mmlu --include_path benches/tasks --batch_size "$EVAL_BS" --device cuda:0 \
            --output_path "$o/lmeval-cuda-$name-$attn" --log_samples
    done
    # 5. numerics
    python3 benches/compare_samples.py "$o/cuda-$name" "$o/cpu-$name" --name "$name sae-onnx cuda vs cpu" \
        >> "$RES/gpu.numerics.txt" || status=1
    python3 benches/compare_samples.py "$o/cuda-$name" "$o/lmeval-cuda-$name-eager" \
        --name "$name sae-onnx cuda vs lm-eval cuda eager" >> "$RES/gpu.numerics.txt" || status=1
done
# 6. the table, last
python3 benches/report.py --gpu "$RES"
exit $status
