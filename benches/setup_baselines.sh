#!/usr/bin/env bash
# Installs what benches/run.sh compares against, from PyPI (and /usr/bin/time from Debian).
#
#   bash benches/setup_baselines.sh
#
# BENCH_VENV (/work/bench-venv) is a venv that sees the reference venv REFENV (/work/refenv: torch,
# transformers, onnx, onnxruntime, lm_eval[hf], pinned by tests/fixtures/requirements.txt) through a
# .pth file, so the 6 GB torch install is not repeated, plus optimum-onnx 0.1.0 / optimum 2.1.0
# (the ONNX exporter baseline), constrained to the reference versions (pip freeze of REFENV).
# REFENV is created from tests/fixtures/requirements.txt first if it does not exist.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REFENV=${REFENV:-/work/refenv}
VENV=${BENCH_VENV:-/work/bench-venv}

if [ ! -x /usr/bin/time ]; then
    apt-get update && apt-get install -y time
fi
if [ ! -x "$REFENV/bin/python" ]; then
    python3.11 -m venv "$REFENV"
    "$REFENV/bin/pip" install -r "$REPO/tests/fixtures/requirements.txt"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$REFENV/bin/python" -m venv "$VENV"
fi
SITE=$("$REFENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
VSITE=$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
echo "$SITE" > "$VSITE/zz_refenv.pth"
CONSTRAINTS=$(mktemp)
"$REFENV/bin/pip" freeze > "$CONSTRAINTS"
"$VENV/bin/pip" install -q -c "$CONSTRAINTS" optimum-onnx==0.1.0 optimum==2.1.0
rm -f "$CONSTRAINTS"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
for p in ["torch", "transformers", "onnx", "onnxruntime", "lm_eval", "optimum", "optimum-onnx", "numpy"]:
    print(f"{p}=={md.version(p)}")
EOF
