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

# llama.cpp (ggml-org/llama.cpp, the commit node-llama-cpp 3.22.1 pins): its prebuilt CPU shared
# libraries from npm @node-llama-cpp/linux-x64, the headers from the source bundle in npm
# node-llama-cpp, and tests/runtimes/llama_cpp_logits.cpp compiled against both (needs git, g++).
llama_version=3.22.1
llama_dir=.venv/llama.cpp
llama_driver=$llama_dir/llama_cpp_logits
if [ "$(uname -sm)" = "Linux x86_64" ]; then
    if ! [ -x "$llama_driver" ] || ! [ "$(cat "$llama_dir/version" 2>/dev/null)" = "$llama_version" ] \
        || [ tests/runtimes/llama_cpp_logits.cpp -nt "$llama_driver" ]; then
        rm -rf "$llama_dir"
        mkdir -p "$llama_dir/pack"
        (cd "$llama_dir/pack" && npm pack --silent "@node-llama-cpp/linux-x64@$llama_version" "node-llama-cpp@$llama_version" >&2)
        tar xzf "$llama_dir/pack/node-llama-cpp-linux-x64-$llama_version.tgz" -C "$llama_dir/pack" package/bins/linux-x64
        mv "$llama_dir/pack/package/bins/linux-x64" "$llama_dir/lib"
        tar xzf "$llama_dir/pack/node-llama-cpp-$llama_version.tgz" -C "$llama_dir/pack" package/llama/gitRelease.bundle
        # Only what the driver compiles against and tests/fixtures/llama_cpp/make_llama_cpp_golden.py
        # runs (the converter and gguf-py), not the whole tree.
        git -c advice.detachedHead=false -c init.defaultBranch=main clone --quiet --no-checkout "$llama_dir/pack/package/llama/gitRelease.bundle" "$llama_dir/src" >&2
        git -C "$llama_dir/src" checkout --quiet HEAD -- include common ggml/include gguf-py conversion convert_hf_to_gguf.py >&2
        rm -rf "$llama_dir/pack"
        g++ -std=c++17 -O2 tests/runtimes/llama_cpp_logits.cpp -o "$llama_driver" \
            -I"$llama_dir/src/include" -I"$llama_dir/src/common" -I"$llama_dir/src/ggml/include" \
            -L"$llama_dir/lib" -l:libllama-common.so -l:libllama.v0.5.0.so -l:libggml.v0.5.0.so -l:libggml-base.so \
            -Wl,-rpath,'$ORIGIN/lib' >&2
        echo "$llama_version" > "$llama_dir/version"
    fi
    echo "export SAE_ONNX_LLAMA_CPP=$PWD/$llama_driver"
fi
