"""Decode speed: `sae-onnx generate` on a decoding graph (export --kv-cache) against transformers'
`generate(do_sample=False)` with its KV cache, same checkpoint, prompt, token budget, threads.

    $BENCH_PYTHON benches/generate.py [CHECKPOINT_DIR] [--new 64] [--runs 3] [--threads 2]

BENCH_PYTHON: any interpreter with torch and transformers (the reference environment of
tests/fixtures/requirements.txt; see benches/run.sh), e.g. python3. Default checkpoint: the ~100M
random Gemma 2 that benches/make_checkpoint.py writes ($BENCH_TMP/ckpt/gemma2-100m; BENCH_TMP
defaults to ${TMPDIR:-/tmp}/sae-onnx-bench, as in benches/run.sh). Default binary: $SAE_ONNX, else
target/release/sae-onnx in this repository. Both tools run float32 on the CPU with eager attention semantics
(transformers: attn_implementation="eager", which keeps Gemma 2's softcapping). Reported: median
new tokens per second over the whole generate call (prompt prefill included), and the ratio.
(Token equality with transformers is tested in tests/it/generate_greedy.rs.)
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

parser = argparse.ArgumentParser()
BENCH_TMP = os.environ.get("BENCH_TMP") or os.path.join(os.environ.get("TMPDIR") or "/tmp", "sae-onnx-bench")
parser.add_argument("checkpoint", nargs="?", default=os.path.join(BENCH_TMP, "ckpt/gemma2-100m"))
parser.add_argument("--new", type=int, default=64)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--device", default="cpu", help="cpu or cuda:N (both tools)")
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
parser.add_argument("--onnx", default=None, help="an existing decoding-graph export (else exported here, float32)")
parser.add_argument("--binary", default=os.environ.get("SAE_ONNX")
                    or str(Path(__file__).resolve().parent.parent / "target/release/sae-onnx"))
args = parser.parse_args()
torch.set_num_threads(args.threads)
prompt = "The following are questions about animals. Which animal has a long neck and eats leaves from tall trees?"

tok = AutoTokenizer.from_pretrained(args.checkpoint)
ids = tok(prompt, return_tensors="pt").input_ids.to(args.device)
model = AutoModelForCausalLM.from_pretrained(
    args.checkpoint, torch_dtype=getattr(torch, args.dtype), attn_implementation="eager").to(args.device).eval()
hf_times, hf_tokens = [], None
sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
with torch.no_grad():
    model.generate(ids, do_sample=False, max_new_tokens=4, min_new_tokens=4)  # warm-up
    for _ in range(args.runs):
        sync()
        start = time.perf_counter()
        out = model.generate(ids, do_sample=False, max_new_tokens=args.new, min_new_tokens=args.new, eos_token_id=None)
        sync()
        hf_times.append(time.perf_counter() - start)
        hf_tokens = out[0, ids.shape[1]:].tolist()
del model
if args.device.startswith("cuda"):
    torch.cuda.empty_cache()

env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
with tempfile.TemporaryDirectory() as tmp:
    onnx = args.onnx or os.path.join(tmp, "kv.onnx")
    if not args.onnx:
        subprocess.run([args.binary, "-q", "export", args.checkpoint, "-o", onnx, "--kv-cache"], check=True)
    ours = []
    for _ in range(args.runs + 1):
        run = subprocess.run(
            [args.binary, "-v", "-q", "generate", onnx, "--prompt", prompt, "--max-new-tokens", str(args.new),
             "--device", args.device],
            check=True, capture_output=True, text=True, env=env,
        )
        m = re.search(r"\[(\d+) new tokens in ([0-9.]+)s", run.stderr)
        ours.append((int(m.group(1)), float(m.group(2))))
    ours = ours[1:]  # the first run warms the page cache

hf_tps = args.new / statistics.median(hf_times)
our_tps = statistics.median(n / s for n, s in ours)
row = {
    "checkpoint": args.checkpoint,
    "new_tokens": args.new,
    "prompt_tokens": int(ids.shape[1]),
    "threads": args.threads,
    "device": args.device,
    "dtype": args.dtype,
    "runs": args.runs,
    "transformers_tokens_per_s": round(hf_tps, 2),
    "sae_onnx_tokens_per_s": round(our_tps, 2),
    "ratio": round(our_tps / hf_tps, 2),
    "our_new_tokens": [n for n, _ in ours],
    "machine": {"nproc": os.cpu_count(), "load": open("/proc/loadavg").read().split()[:3]},
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
}
print(json.dumps(row))
