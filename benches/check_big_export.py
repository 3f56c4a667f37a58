"""Sanity check (not a benchmark): does a big sae-onnx export compute what transformers computes?

    python benches/check_big_export.py CHECKPOINT_DIR MODEL.onnx [STEERED.onnx]

Runs 12 token ids through transformers (float32, eager attention) and then, with the torch model freed,
through ONNX Runtime (CPU) on MODEL.onnx; prints max |logits difference| and each step's time. With
STEERED.onnx (from `sae-onnx patch`), also checks that steering changed the logits and that the
unsteered positions of nothing else broke (runs, finite). Needs ~2x the f32 model size in RAM at peak
(one model at a time). Reference venv: torch, transformers, onnxruntime.
"""

import gc
import sys
import time

import numpy as np


def main():
    ckpt, onnx_path = sys.argv[1], sys.argv[2]
    steered = sys.argv[3] if len(sys.argv) > 3 else None
    ids = np.array([[2, 651, 1000, 17, 4242, 90210, 5, 77, 1234, 300, 31337, 9]], dtype=np.int64)
    am = np.ones_like(ids)

    import torch
    from transformers import AutoModelForCausalLM

    t = time.perf_counter()
    m = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    t_load = time.perf_counter() - t
    with torch.no_grad():
        ref = m(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(am)).logits.numpy()
    print(f"transformers: load {t_load:.1f}s, logits {ref.shape}", flush=True)
    del m
    gc.collect()

    import onnxruntime as ort

    for name, path in [("export", onnx_path)] + ([("steered", steered)] if steered else []):
        t = time.perf_counter()
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        t_sess = time.perf_counter() - t
        out = s.run(["logits"], {"input_ids": ids, "attention_mask": am})[0]
        d = np.abs(out - ref).max()
        print(f"{name}: session {t_sess:.1f}s, max |logits - transformers| = {d:.3e}, finite {np.isfinite(out).all()}",
              flush=True)
        del s
        gc.collect()


if __name__ == "__main__":
    main()
