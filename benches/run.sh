#!/usr/bin/env bash
# sae-onnx benchmarks: bash benches/run.sh [export|patch|eval|eval5|sgemm|check|all]   (from anywhere)
#   export  sae-onnx export vs optimum (2b shape, 2b-L6, 100m)      ~10 min
#   patch   sae-onnx patch vs Python onnx on the 2b-shaped export   ~3 min
#   eval    sae-onnx eval vs lm-eval hf, tiny and 100m; then sgemm  ~10 min on a quiet machine
#   eval5   the same 100m eval 5-shot: ours on the decoding graph (shared prefixes) and the
#           full graph vs lm-eval hf eager                           ~12 min
#   sgemm   this machine's float32 matmul rate (the eval floor)     ~1 min
#   check   not timed: the 2b-shaped export and a steered copy vs transformers (13 GB peak)
#   all     all of the above, in that order
#
# Needs: benches/setup_baselines.sh run once (the baseline venv), a release build (built here if
# missing), /usr/bin/time, ~45 GB free under $BENCH_TMP. Writes benches/results/<section>.jsonl
# (one JSON object per measured command; the previous file is kept as .prev.jsonl) and the logs of
# every run in benches/results/<section>.logs/; prints the tables (benches/report.py) at the end.
# Big files (checkpoints, exported models) live in $BENCH_TMP, never in the repository.
#
# Knobs (environment; relative paths are taken from the repository root):
#   BENCH_TMP     big scratch files (default ${TMPDIR:-/tmp}/sae-onnx-bench)
#   BENCH_PYTHON  the baseline interpreter: torch, transformers, lm_eval[hf], optimum-onnx (default
#                 $BENCH_VENV/bin/python if benches/setup_baselines.sh made it, else python3)
#   BENCH_VENV    where setup_baselines.sh puts that venv (default .venv/bench, git-ignored)
#   SAE_ONNX      the sae-onnx binary (default target/release/sae-onnx, rebuilt when src/ is newer;
#                 a binary named here is used as it is)
#   RUNS (3), EVAL_BS (16: batch size of both tools), OPT_2B_PRESET (2b-L6: the largest
#   gemma-2-2b-shaped checkpoint optimum's export fits in 24 GB here; "2b" tries the full 26 layers).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${BENCH_TMP:-${TMPDIR:-/tmp}/sae-onnx-bench}
VENV=${BENCH_VENV:-.venv/bench}
if [ -n "${BENCH_PYTHON:-}" ]; then PY=$BENCH_PYTHON
elif [ -x "$VENV/bin/python" ]; then PY=$VENV/bin/python
else PY=python3
fi
RUNS=${RUNS:-3}
EVAL_BS=${EVAL_BS:-16}
OPT_2B_PRESET=${OPT_2B_PRESET:-2b-L6}
BIN=${SAE_ONNX:-target/release/sae-onnx}
RES=$REPO/benches/results
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
export BENCH_TMP=$T  # for benches/report.py, which reads the checkpoints' configs there
mkdir -p "$T" "$RES"

prepare() {
    "$PY" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
        ("torch", "transformers", "lm_eval", "optimum", "onnx")))' 2>/dev/null || {
        echo "$PY lacks the baselines (torch, transformers, lm_eval, optimum-onnx): run" \
            "bash benches/setup_baselines.sh, or set BENCH_PYTHON" >&2; exit 1; }
    [ -x /usr/bin/time ] || { echo "/usr/bin/time is missing: apt-get install -y time" >&2; exit 1; }
    if [ -z "${SAE_ONNX:-}" ]; then
        if [ ! -x "$BIN" ] || [ -n "$(find src Cargo.toml -newer "$BIN" -print -quit)" ]; then
            cargo build --release
        fi
    elif [ ! -x "$BIN" ]; then
        echo "SAE_ONNX=$BIN is not an executable" >&2; exit 1
    fi
}

measure() {  # a failed or killed run is recorded in the results (rc, log tail); go on
    python3 "$REPO/benches/measure.py" "$@" || echo "   (recorded as failed: rc $?)" >&2
}

checkpoint() {  # checkpoint PRESET -> prints its folder, generating it once
    local dir=$T/ckpt/gemma2-$1
    [ -f "$dir/config.json" ] || "$PY" benches/make_checkpoint.py "$1" "$dir" >&2
    echo "$dir"
}

start_section() {
    OUT=$RES/$1.jsonl
    [ -f "$OUT" ] && mv "$OUT" "$RES/$1.prev.jsonl"
    rm -rf "$RES/$1.logs"
    echo "== $1 ($(date -u '+%F %T UTC'), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))" >&2
}

export_section() {
    start_section export
    rm -f "$RES/export.rss_split.txt"
    local ck2b; ck2b=$(checkpoint 2b)
    local ck100; ck100=$(checkpoint 100m)
    mkdir -p "$T/export"
    # ours, gemma-2-2b shape (5.2 GB bf16 in, 10.5 GB f32 / 5.2 GB bf16 out)
    for dt in f32 bf16; do
        measure --out "$OUT" --name "ours 2b-shape $dt" --runs "$RUNS" \
            --before "rm -f $T/export/2b-$dt.onnx $T/export/2b-$dt.onnx.data" \
            -- "$BIN" -q export "$ck2b" -o "$T/export/2b-$dt.onnx" --dtype "$dt" --force
        # one more run, sampling /proc: anonymous vs file-backed (mmap'ed checkpoint) resident pages
        echo "ours 2b-shape $dt: $(python3 benches/rss_split.py -- "$BIN" -q export "$ck2b" \
            -o "$T/export/2b-$dt.onnx" --dtype "$dt" --force 2>&1 | grep RssAnon)" >> "$RES/export.rss_split.txt"
        [ "$dt" = f32 ] || rm -f "$T/export/2b-$dt.onnx" "$T/export/2b-$dt.onnx.data"
    done
    # optimum, the largest 2b shape that fits (one run: several minutes each), and ours on the same
    local ckopt; ckopt=$(checkpoint "$OPT_2B_PRESET")
    measure --out "$OUT" --name "ours $OPT_2B_PRESET f32" --runs "$RUNS" \
        --before "rm -f $T/export/opt-ours.onnx $T/export/opt-ours.onnx.data" \
        -- "$BIN" -q export "$ckopt" -o "$T/export/opt-ours.onnx" --force
    rm -f "$T/export/opt-ours.onnx" "$T/export/opt-ours.onnx.data"
    measure --out "$OUT" --name "optimum $OPT_2B_PRESET f32" --runs 1 --before "rm -rf $T/export/opt" \
        -- "$PY" benches/optimum_export.py "$ckopt" "$T/export/opt" --no-post-process
    rm -rf "$T/export/opt"
    # 100m: ours vs optimum
    measure --out "$OUT" --name "ours 100m f32" --runs "$RUNS" --before "rm -f $T/export/100m.onnx*" \
        -- "$BIN" -q export "$ck100" -o "$T/export/100m.onnx" --force
    rm -f "$T/export/100m.onnx" "$T/export/100m.onnx.data"
    measure --out "$OUT" --name "optimum 100m f32" --runs "$RUNS" --before "rm -rf $T/export/opt100" \
        -- "$PY" benches/optimum_export.py "$ck100" "$T/export/opt100"
    rm -rf "$T/export/opt100"
    # bf16 out: optimum (torch's TorchScript exporter) fails on Gemma 2 in bf16; recorded as it fails
    measure --out "$OUT" --name "ours 100m bf16" --runs "$RUNS" --before "rm -f $T/export/100m-bf16.onnx*" \
        -- "$BIN" -q export "$ck100" -o "$T/export/100m-bf16.onnx" --dtype bf16 --force
    rm -f "$T/export/100m-bf16.onnx" "$T/export/100m-bf16.onnx.data"
    measure --out "$OUT" --name "optimum 100m bf16" --runs 1 --before "rm -rf $T/export/opt100bf16" \
        -- "$PY" benches/optimum_export.py "$ck100" "$T/export/opt100bf16" --dtype bf16
    rm -rf "$T/export/opt100bf16"
}

patch_section() {
    start_section patch
    local ck2b; ck2b=$(checkpoint 2b)
    local m=$T/export/2b-f32.onnx
    if [ ! -f "$m" ]; then
        mkdir -p "$T/export"
        "$BIN" -q export "$ck2b" -o "$m" --force
    fi
    [ -f "$T/sae2b/steer.csv" ] || "$PY" benches/make_sae.py "$T/sae2b"
    measure --out "$OUT" --name "ours patch 2b-shape f32" --runs "$RUNS" \
        --before "rm -f $T/export/steered.onnx" \
        -- "$BIN" -q patch --csv "$T/sae2b/steer.csv" --model "$m" -o "$T/export/steered.onnx"
    measure --out "$OUT" --name "ours patch 2b-shape f32, other folder" --runs "$RUNS" \
        --before "rm -rf $T/patch-ours && mkdir -p $T/patch-ours" \
        -- "$BIN" -q patch --csv "$T/sae2b/steer.csv" --model "$m" -o "$T/patch-ours/steered.onnx"
    rm -rf "$T/patch-ours"
    measure --out "$OUT" --name "python onnx patch 2b-shape f32 (full load/save)" --runs "$RUNS" \
        --before "rm -rf $T/patch-py && mkdir -p $T/patch-py && sync" \
        -- "$PY" benches/onnx_patch.py "$m" "$T/sae2b" "$T/patch-py/steered.onnx"
    rm -rf "$T/patch-py"
    measure --out "$OUT" --name "python onnx patch 2b-shape f32 (lazy: weights not loaded)" --runs "$RUNS" \
        --before "rm -f $T/export/steered-py.onnx" \
        -- "$PY" benches/onnx_patch.py "$m" "$T/sae2b" "$T/export/steered-py.onnx" --lazy
    rm -f "$T/export/steered-py.onnx" "$T/export/steered.onnx"
    # the same on the 100m export (0.4 GB): patch time should not depend on the weights' size
    local ck100; ck100=$(checkpoint 100m)
    mkdir -p "$T/patch100"
    [ -f "$T/patch100/100m.onnx" ] || "$BIN" -q export "$ck100" -o "$T/patch100/100m.onnx" --force
    [ -f "$T/sae100/steer.csv" ] || "$PY" benches/make_sae.py "$T/sae100" --d-in 768 --hook blocks.5.hook_resid_post
    measure --out "$OUT" --name "ours patch 100m f32" --runs "$RUNS" --before "rm -f $T/patch100/steered.onnx" \
        -- "$BIN" -q patch --csv "$T/sae100/steer.csv" --model "$T/patch100/100m.onnx" -o "$T/patch100/steered.onnx"
    measure --out "$OUT" --name "python onnx patch 100m f32 (full load/save)" --runs "$RUNS" \
        --before "rm -rf $T/patch100/py && mkdir -p $T/patch100/py" \
        -- "$PY" benches/onnx_patch.py "$T/patch100/100m.onnx" "$T/sae100" "$T/patch100/py/steered.onnx"
    rm -rf "$T/patch100"
}

eval_section() {
    start_section eval
    local ck100; ck100=$(checkpoint 100m)
    [ -f benches/tasks/bench_mmlu.yaml ] || python3 benches/make_task.py
    mkdir -p "$T/eval"
    local name dir
    for name in tiny 100m; do
        if [ "$name" = tiny ]; then dir=models/tiny-gemma2; else dir=$ck100; fi
        [ -f "$T/eval/$name.onnx" ] || "$BIN" -q export "$dir" -o "$T/eval/$name.onnx" --force
        local o=$T/eval/out
        # ours: whole command; then with every answer cached (no session, no forward), so that
        # (whole - cached) = ONNX Runtime session + scoring
        measure --out "$OUT" --name "ours eval $name bs$EVAL_BS" --runs "$RUNS" \
            --before "rm -rf $o/ours-$name" \
            -- "$BIN" -q eval "$T/eval/$name.onnx" --task bench_mmlu --include-path benches/tasks \
            --batch-size "$EVAL_BS" --output-path "$o/ours-$name" --log-samples
        rm -f "$T/eval/$name.cache.jsonl"
        "$BIN" -q eval "$T/eval/$name.onnx" --task bench_mmlu --include-path benches/tasks \
            --batch-size "$EVAL_BS" --cache "$T/eval/$name.cache.jsonl" > /dev/null 2>&1
        measure --out "$OUT" --name "ours eval $name bs$EVAL_BS, all answers cached" --runs "$RUNS" \
            -- "$BIN" -q eval "$T/eval/$name.onnx" --task bench_mmlu --include-path benches/tasks \
            --batch-size "$EVAL_BS" --cache "$T/eval/$name.cache.jsonl"
        local attn
        for attn in eager sdpa; do
            measure --out "$OUT" --name "lm-eval hf $name bs$EVAL_BS $attn" --runs "$RUNS" \
                --scoring "$T/eval/scoring.json" --before "rm -rf $o/lmeval-$name-$attn" \
                -- "$PY" benches/lmeval_timed.py run --model hf \
                --model_args "pretrained=$dir,dtype=float32,attn_implementation=$attn" \
                --tasks bench_mmlu --include_path benches/tasks --batch_size "$EVAL_BS" --device cpu \
                --output_path "$o/lmeval-$name-$attn" --log_samples
        done
        for attn in eager sdpa; do
            python3 benches/compare_samples.py "$o/ours-$name" "$o/lmeval-$name-$attn" \
                --name "$name ours vs lm-eval $attn" >> "$RES/eval.numerics.txt" || true
        done
    done
}

eval5_section() {  # MMLU as usually run, 5-shot: every question of a subject shares its 5 examples
    start_section eval5
    local ck100; ck100=$(checkpoint 100m)
    [ -f benches/tasks/bench_mmlu.yaml ] || python3 benches/make_task.py
    mkdir -p "$T/eval"
    local o=$T/eval/out5 common=(--task bench_mmlu --include-path benches/tasks --num-fewshot 5 --batch-size "$EVAL_BS")
    [ -f "$T/eval/100m.onnx" ] || "$BIN" -q export "$ck100" -o "$T/eval/100m.onnx" --force
    [ -f "$T/eval/100m.kv.onnx" ] || "$BIN" -q export "$ck100" -o "$T/eval/100m.kv.onnx" --kv-cache --force
    # ours on the decoding graph (each subject's 5-shot prefix computed once), then on the
    # full-sequence graph (everything recomputed, as lm-eval does)
    measure --out "$OUT" --name "ours eval 100m kv-cache graph bs$EVAL_BS 5-shot" --runs "$RUNS" \
        --before "rm -rf $o/ours-kv" \
        -- "$BIN" eval "$T/eval/100m.kv.onnx" "${common[@]}" --output-path "$o/ours-kv" --log-samples
    measure --out "$OUT" --name "ours eval 100m full graph bs$EVAL_BS 5-shot" --runs "$RUNS" \
        --before "rm -rf $o/ours-full" \
        -- "$BIN" eval "$T/eval/100m.onnx" "${common[@]}" --output-path "$o/ours-full" --log-samples
    measure --out "$OUT" --name "lm-eval hf 100m bs$EVAL_BS 5-shot eager" --runs "$RUNS" \
        --scoring "$T/eval/scoring.json" --before "rm -rf $o/lmeval" \
        -- "$PY" benches/lmeval_timed.py run --model hf \
        --model_args "pretrained=$ck100,dtype=float32,attn_implementation=eager" \
        --tasks bench_mmlu --include_path benches/tasks --num_fewshot 5 --batch_size "$EVAL_BS" --device cpu \
        --output_path "$o/lmeval" --log_samples
    : > "$RES/eval5.numerics.txt"
    python3 benches/compare_samples.py "$o/ours-kv" "$o/lmeval" --name "100m 5-shot ours (kv-cache graph) vs lm-eval eager" \
        --tol 1e-4 >> "$RES/eval5.numerics.txt" || true
    python3 benches/compare_samples.py "$o/ours-full" "$o/lmeval" --name "100m 5-shot ours (full graph) vs lm-eval eager" \
        --tol 1e-4 >> "$RES/eval5.numerics.txt" || true
}

check_section() {  # not a benchmark: the 2b-shaped export (and a steered copy) against transformers
    local ck2b; ck2b=$(checkpoint 2b)
    local m=$T/export/2b-f32.onnx
    [ -f "$m" ] || "$BIN" -q export "$ck2b" -o "$m" --force
    [ -f "$T/sae2b/steer.csv" ] || "$PY" benches/make_sae.py "$T/sae2b"
    "$BIN" -q patch --csv "$T/sae2b/steer.csv" --model "$m" -o "$T/export/steered.onnx"
    "$PY" benches/check_big_export.py "$ck2b" "$m" "$T/export/steered.onnx" 2>&1 \
        | grep -v -i 'warn\|Loading checkpoint' | tee "$RES/check.txt"
    rm -f "$T/export/steered.onnx"
}

sgemm_section() {
    "$PY" benches/sgemm.py --json "$RES/sgemm.json"
}

main() {
prepare
case "${1:-all}" in
    export) export_section ;;
    patch) patch_section ;;
    eval) rm -f "$RES/eval.numerics.txt"; eval_section; sgemm_section ;;
    eval5) eval5_section ;;
    sgemm) sgemm_section ;;
    check) check_section ;;
    all) export_section; patch_section; check_section; rm -f "$RES/eval.numerics.txt"; eval_section; sgemm_section ;;
    *) echo "usage: benches/run.sh [export|patch|eval|eval5|sgemm|check|all]" >&2; exit 2 ;;
esac
python3 benches/report.py "$RES"
}

# Everything above is only definitions; this last line is parsed whole before it runs, so editing
# this file while a benchmark runs cannot change what the running shell does next.
main "$@"; exit $?
