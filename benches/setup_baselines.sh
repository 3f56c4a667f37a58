#!/usr/bin/env bash
# Installs what benches/run.sh compares against, from PyPI (and /usr/bin/time from Debian).
#
#   bash benches/setup_baselines.sh
#
# BENCH_VENV (default .venv/bench) is a venv that sees the reference environment (torch,
# transformers, onnx, onnxruntime, lm_eval[hf], pinned by tests/fixtures/requirements.txt) through a
# .pth file, so the 6 GB torch install is not repeated, plus optimum-onnx 0.1.0 / optimum 2.1.0
# (the ONNX exporter baseline), constrained to the reference versions (pip freeze of the reference).
# The reference is REF_PYTHON, an interpreter that already has those packages, or else the venv
# REF_VENV (default .venv/ref), created from tests/fixtures/requirements.txt with python3.11 if it
# does not exist. Relative paths are taken from the repository root (.venv/ is git-ignored).
# Afterwards benches/run.sh finds $BENCH_VENV/bin/python by itself (or set BENCH_PYTHON to it).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
REFENV=${REF_VENV:-.venv/ref}
VENV=${BENCH_VENV:-.venv/bench}

if [ ! -x /usr/bin/time ]; then
    apt-get update && apt-get install -y time
fi
if [ -n "${REF_PYTHON:-}" ]; then
    REFPY=$REF_PYTHON
else
    if [ ! -x "$REFENV/bin/python" ]; then
        python3.11 -m venv "$REFENV"
        "$REFENV/bin/pip" install -r tests/fixtures/requirements.txt
    fi
    REFPY=$REFENV/bin/python
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$REFPY" -m venv "$VENV"
fi
SITE=$("$REFPY" -c 'import site; print(site.getsitepackages()[0])')
VSITE=$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
echo "$SITE" > "$VSITE/zz_refenv.pth"
CONSTRAINTS=$(mktemp)
"$REFPY" -m pip freeze > "$CONSTRAINTS"
"$VENV/bin/pip" install -q -c "$CONSTRAINTS" optimum-onnx==0.1.0 optimum==2.1.0
rm -f "$CONSTRAINTS"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
for p in ["torch", "transformers", "onnx", "onnxruntime", "lm_eval", "optimum", "optimum-onnx", "numpy"]:
    print(f"{p}=={md.version(p)}")
EOF
echo "baseline interpreter: $VENV/bin/python (benches/run.sh uses it; BENCH_PYTHON overrides)"
