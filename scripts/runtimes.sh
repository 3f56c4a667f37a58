#!/usr/bin/env bash
# The other runtimes the `package` tests run the packages in, installed pinned and idempotently
# under .venv/ (git-ignored): onnxruntime-genai 0.18.0 in .venv/genai (Python, from PyPI), and
# @huggingface/transformers 3.8.1 in .venv/node (npm; onnxruntime-node's CPU build only, no CUDA
# download) with playwright-core 1.65.2, which drives the system Chromium in the web page test
# (tests/it/web_page.rs). Needs python3 with venv and pip, node and npm.
# Prints the variables the tests read; `scripts/test.sh` evaluates them:
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

node_dir=.venv/node
if ! NODE_PATH=$node_dir/node_modules node -e 'process.exit(require("@huggingface/transformers").env.version === "3.8.1"
        && require("playwright-core/package.json").version === "1.65.2" ? 0 : 1)' 2>/dev/null; then
    mkdir -p "$node_dir"
    echo '{"private": true}' > "$node_dir/package.json"
    ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm install --prefix "$node_dir" --no-audit --no-fund --save-exact \
        @huggingface/transformers@3.8.1 playwright-core@1.65.2 >&2
fi
echo "export SAE_ONNX_NODE_PATH=$PWD/$node_dir/node_modules"
