"""Baseline for `sae-onnx export`: optimum's ONNX exporter (optimum-onnx 0.1.0, optimum 2.1.0).

    $BENCH_PYTHON benches/optimum_export.py MODEL_DIR OUT_DIR [--dtype fp32|bf16] [--validate]
                                           [--no-post-process]

BENCH_PYTHON: the baseline interpreter of benches/run.sh (default .venv/bench/bin/python, made by
benches/setup_baselines.sh, else python3).

The same call as `optimum-cli export onnx --model MODEL_DIR --task text-generation [--dtype D] OUT_DIR`
(optimum.exporters.onnx.main_export), except that the CLI always runs its validation afterwards (a
second, ONNX Runtime copy of the model compared with torch's outputs). That is not part of exporting,
and sae-onnx export does not do it, so it is off here unless --validate. Task text-generation: no KV
cache inputs, like sae-onnx's graph (input_ids, attention_mask -> logits).

--no-post-process: skip optimum's post-processing, which de-duplicates the tied embedding / LM head
initializers. With optimum 2.1.0 + protobuf 7.36 it fails on any export over 2 GiB
(`model.ByteSize()` raises "Failed to serialize proto" in check_and_save_model), so large shapes need
this flag, and their ONNX file then holds the embedding twice (as optimum's CLI would with the flag).
"""

import argparse
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--no-post-process", action="store_true")
    a = ap.parse_args()
    t = time.perf_counter()
    from optimum.exporters.onnx import main_export
    t_import = time.perf_counter() - t
    main_export(a.model, a.out, task="text-generation", dtype=a.dtype, do_validation=a.validate,
                no_post_process=a.no_post_process, device="cpu")
    print(f"optimum export: imports {t_import:.1f}s, total {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
