"""This machine's float32 matmul rate (GFLOP/s), for the eval benchmark's physical floor.

    OMP_NUM_THREADS=T python benches/sgemm.py [--json OUT]    (reference venv: numpy and torch)

For 1 and 2 threads (torch.set_num_threads; numpy's BLAS via threadpoolctl-free env: numpy runs in a
child process per thread count with OMP/OPENBLAS/MKL_NUM_THREADS set), best of 5 after a warm-up, on
  square   2048 x 2048 @ 2048 x 2048
  mlp      2048 x 768 @ 768 x 3072   (the 100m model's MLP up-projection on 2048 tokens)
FLOPs = 2*m*n*k. Prints a table, and writes JSON when asked.
"""

import json
import os
import subprocess
import sys
import time

SHAPES = {"square": (2048, 2048, 2048), "mlp": (2048, 768, 3072)}


def bench(fn, flops):
    fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def child(lib, threads):
    out = {}
    if lib == "torch":
        import torch
        torch.set_num_threads(threads)
        for name, (m, k, n) in SHAPES.items():
            a, b = torch.randn(m, k), torch.randn(k, n)
            out[name] = bench(lambda: torch.mm(a, b), 2 * m * k * n)
    else:
        import numpy as np
        rng = np.random.default_rng(0)
        for name, (m, k, n) in SHAPES.items():
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            out[name] = bench(lambda: a @ b, 2 * m * k * n)
    print(json.dumps(out))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    results = {}
    for lib in ("numpy", "torch"):
        for threads in (1, 2):
            env = dict(os.environ)
            for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[v] = str(threads)
            p = subprocess.run([sys.executable, __file__, "--child", lib, str(threads)], env=env,
                               capture_output=True, text=True, check=True)
            results[f"{lib}/{threads}t"] = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"{'library/threads':<16} " + " ".join(f"{s:>12}" for s in SHAPES))
    for key, r in results.items():
        print(f"{key:<16} " + " ".join(f"{r[s]:>9.1f} GF" for s in SHAPES))
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
