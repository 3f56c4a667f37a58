"""Packs what benches/gpu.sh needs on a GPU machine without network into parts under .gpu/.

    python3 benches/gpu_bundle.py [--budget-mib 64]

The device tool here sends the working tree plus at most 64 MiB per call, so the bundle is cut to
fit: each part is the budget less the tracked and untracked files that travel anyway, less a margin.
  .gpu/p0/   whl/ (lm-eval 0.4.13, transformers 4.57.6 and the packages the GPU image lacks, for
             CPython 3.12), ort-core.tar.xz (libonnxruntime.so.1.31.1 and the shared-provider library
             of onnxruntime-gpu 1.31.1), sae-onnx.xz (target/release/sae-onnx, stripped),
             cuda.parts (how many pieces the CUDA provider has), and its first piece
  .gpu/pK/   cuda.xz.K: the next piece of libonnxruntime_providers_cuda.so, xz-compressed
Downloads come from PyPI (pip download); the onnxruntime-gpu wheel is ~255 MB. Run the parts'
calls back to back: `bash benches/gpu.sh STAGE` in each unpacks what has arrived.
"""

import argparse
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G = os.path.join(REPO, ".gpu")
CACHE = os.path.join(G, "cache")
PY312 = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", "--no-deps"] + sum(
    (["--platform", p] for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")), [])
# The reference pins (tests/fixtures/requirements.txt) of what the GPU image lacks or has in another version.
WHEELS = ["lm_eval==0.4.13", "transformers==4.57.6", "huggingface_hub==0.36.2", "tokenizers==0.22.2",
          "datasets==5.0.1", "evaluate==0.4.6", "dill==0.4.1", "multiprocess==0.70.19", "pytablewriter==1.2.1",
          "DataProperty==1.1.1", "mbstrdecoder==1.1.5", "pathvalidate==3.3.1", "tabledata==1.3.5",
          "tcolorpy==0.1.7", "typepy==1.3.5", "chardet==6.0.0.post1", "more-itertools==11.2.1", "nltk==3.10.4",
          "pytz==2026.6"]
SDIST_ONLY = ["sqlitedict==2.1.0", "rouge_score==0.1.2", "word2number==1.1"]  # pure Python: built here
ORT = "onnxruntime-gpu==1.31.1"


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def travelling_bytes():
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return sum(os.path.getsize(os.path.join(REPO, f)) for f in out.decode().split("\0")
               if f and os.path.isfile(os.path.join(REPO, f)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-mib", type=float, default=64)
    ap.add_argument("--margin-mib", type=float, default=2)
    a = ap.parse_args()
    budget = int((a.budget_mib - a.margin_mib) * 2**20) - travelling_bytes()
    binary = os.path.join(REPO, "target", "release", "sae-onnx")
    if not os.path.exists(binary):
        sys.exit("build the binary first: cargo build --release")

    os.makedirs(CACHE, exist_ok=True)
    whl = os.path.join(CACHE, "whl")
    if not os.path.isdir(whl):
        pip("download", *PY312, "-d", whl + ".tmp", *WHEELS)
        pip("wheel", "--no-deps", "-w", whl + ".tmp", *SDIST_ONLY)
        os.rename(whl + ".tmp", whl)
    ort_whl = os.path.join(CACHE, "ort")
    if not os.path.isdir(ort_whl):
        pip("download", *PY312, "-d", ort_whl + ".tmp", ORT)
        os.rename(ort_whl + ".tmp", ort_whl)
    wheel = os.path.join(ort_whl, os.listdir(ort_whl)[0])
    cuda_xz = os.path.join(CACHE, "cuda.xz")
    core = io.BytesIO()
    with zipfile.ZipFile(wheel) as z:
        with tarfile.open(fileobj=core, mode="w:xz") as t:
            for name in ("libonnxruntime.so.1.31.1", "libonnxruntime_providers_shared.so"):
                data = z.read(f"onnxruntime/capi/{name}")
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o755
                t.addfile(info, io.BytesIO(data))
        if not os.path.exists(cuda_xz):
            with z.open("onnxruntime/capi/libonnxruntime_providers_cuda.so") as src, \
                    lzma.open(cuda_xz + ".tmp", "wb", preset=6) as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
            os.rename(cuda_xz + ".tmp", cuda_xz)
    stripped = os.path.join(CACHE, "sae-onnx")
    subprocess.run(["strip", "-o", stripped, binary], check=True)

    for d in os.listdir(G):
        if d.startswith("p"):
            shutil.rmtree(os.path.join(G, d))
    p0 = os.path.join(G, "p0")
    shutil.copytree(whl, os.path.join(p0, "whl"))
    with open(os.path.join(p0, "ort-core.tar.xz"), "wb") as f:
        f.write(core.getvalue())
    with open(stripped, "rb") as src, lzma.open(os.path.join(p0, "sae-onnx.xz"), "wb", preset=9) as dst:
        shutil.copyfileobj(src, dst)
    used = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p0) for f in fs)
    cuda = open(cuda_xz, "rb").read()
    sizes = [budget - used - 4096]
    while sum(sizes) < len(cuda):
        sizes.append(budget)
    if sizes[0] <= 0:
        sys.exit(f"part 0 alone ({used} bytes) exceeds the budget ({budget} bytes)")
    off = 0
    for k, n in enumerate(sizes):
        d = os.path.join(G, f"p{k}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"cuda.xz.{k:02d}"), "wb") as f:
            f.write(cuda[off:off + n])
        off += n
    with open(os.path.join(p0, "cuda.parts"), "w") as f:
        f.write(f"{len(sizes)}\n")
    for k in range(len(sizes)):
        d = os.path.join(G, f"p{k}")
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
        print(f".gpu/p{k}: {size / 2**20:.1f} MiB")
    print(f"budget per part {budget / 2**20:.1f} MiB (64 MiB less {travelling_bytes() / 2**20:.1f} MiB of tree)")


if __name__ == "__main__":
    main()
