#!/usr/bin/env bash
# The other runtimes the `package` tests run the packages in, installed pinned and idempotently
# under .venv/ (git-ignored): onnxruntime-genai 0.18.0 in .venv/genai (Python, from PyPI).
# Prints the variables the tests read; `.ci/run` evaluates them:
#   eval "$(scripts/runtimes.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(command -v python3 || command -v python) || { echo "runtimes.sh needs python3 with venv and pip" >&2; exit 1; }

genai=.venv/genai
if ! "$genai/bin/python" -c 'import onnxruntime_genai as og; assert og.__version__ == "0.18.0"' 2>/dev/null; then
    rm -rf "$genai"
    "$python" -m venv "$genai" >&2
    "$genai/bin/pip" install --quiet onnxruntime-genai==0.18.0 onnxruntime==1.31.1 numpy==2.4.6 >&2
fi
echo "export SAE_ONNX_GENAI_PYTHON=$PWD/$genai/bin/python"
