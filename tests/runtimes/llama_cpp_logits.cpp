// Runs llama.cpp itself on token ids and prints every position's logits as JSON: the runtime the
// `package --format llama.cpp` tests check our control vectors in. Built by scripts/runtimes.sh
// against the prebuilt llama.cpp libraries of npm `@node-llama-cpp/linux-x64` and the headers of
// the same llama.cpp commit (npm `node-llama-cpp`'s llama/gitRelease.bundle).
//
//   llama_cpp_logits MODEL.gguf [--control-vector CV.gguf] --tokens 2,17,42
//
// The control vector goes the way `llama-cli --control-vector CV.gguf` sends it
// (common_init_from_params in common/common.cpp): common_control_vector_load at strength 1, then
// llama_set_adapter_cvec over layers 1..n_layer.
//
// Output: {"n_layer":L,"n_embd":D,"n_vocab":V,"logits":[[...V floats...], ...one per token]}.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "common.h"
#include "ggml-backend.h"
#include "llama.h"

namespace {

int fail(const std::string & why) {
    std::fprintf(stderr, "llama_cpp_logits: %s\n", why.c_str());
    return 2;
}

bool parse_tokens(const char * text, std::vector<llama_token> & out) {
    std::string s(text);
    size_t at = 0;
    while (at <= s.size()) {
        size_t comma = s.find(',', at);
        std::string item = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
        char * end = nullptr;
        long v = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v < 0) {
            return false;
        }
        out.push_back(static_cast<llama_token>(v));
        if (comma == std::string::npos) {
            break;
        }
        at = comma + 1;
    }
    return !out.empty();
}

// llama.cpp logs to stderr by default; only errors are kept so the caller's stderr stays readable.
void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

}  // namespace

int main(int argc, char ** argv) {
    std::string model_path;
    std::string cvec_path;
    std::vector<llama_token> tokens;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--control-vector" && i + 1 < argc) {
            cvec_path = argv[++i];
        } else if (a == "--tokens" && i + 1 < argc) {
            if (!parse_tokens(argv[++i], tokens)) {
                return fail("--tokens takes comma-separated non-negative token ids, e.g. 2,17,42");
            }
        } else if (model_path.empty() && a.rfind("--", 0) != 0) {
            model_path = a;
        } else {
            return fail("usage: llama_cpp_logits MODEL.gguf [--control-vector CV.gguf] --tokens 2,17,42");
        }
    }
    if (model_path.empty() || tokens.empty()) {
        return fail("usage: llama_cpp_logits MODEL.gguf [--control-vector CV.gguf] --tokens 2,17,42");
    }

    llama_log_set(quiet_log, nullptr);
    // The CPU backends are separate libraries (one per instruction set), loaded from lib/ beside
    // this program where scripts/runtimes.sh installs them.
    std::string exe(4096, '\0');
    const ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
    if (n <= 0) {
        return fail("cannot find this program's folder (/proc/self/exe)");
    }
    exe.resize(static_cast<size_t>(n));
    ggml_backend_load_all_from_path((exe.substr(0, exe.rfind('/')) + "/lib").c_str());
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (model == nullptr) {
        return fail("cannot load model '" + model_path + "'");
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const int n_layer = llama_model_n_layer(model);
    const int n_embd = llama_model_n_embd(model);
    for (llama_token t : tokens) {
        if (t >= n_vocab) {
            return fail("token id " + std::to_string(t) + " is past the vocabulary (" + std::to_string(n_vocab) + ")");
        }
    }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = static_cast<uint32_t>(tokens.size());
    cparams.n_batch = static_cast<uint32_t>(tokens.size());
    cparams.n_ubatch = static_cast<uint32_t>(tokens.size());
    cparams.n_threads = 1;
    cparams.n_threads_batch = 1;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        return fail("cannot create a context");
    }

    if (!cvec_path.empty()) {
        const common_control_vector_data cvec = common_control_vector_load({{1.0f, cvec_path}});
        if (cvec.n_embd == -1) {
            return fail("llama.cpp refused the control vector '" + cvec_path + "'");
        }
        if (llama_set_adapter_cvec(ctx, cvec.data.data(), cvec.data.size(), cvec.n_embd, 1, n_layer) != 0) {
            return fail("llama_set_adapter_cvec refused the control vector '" + cvec_path + "'");
        }
    }

    llama_batch batch = llama_batch_init(static_cast<int32_t>(tokens.size()), 0, 1);
    for (size_t i = 0; i < tokens.size(); i++) {
        batch.token[i] = tokens[i];
        batch.pos[i] = static_cast<llama_pos>(i);
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = static_cast<int32_t>(tokens.size());
    if (llama_decode(ctx, batch) != 0) {
        return fail("llama_decode failed");
    }

    std::printf("{\"n_layer\":%d,\"n_embd\":%d,\"n_vocab\":%d,\"logits\":[", n_layer, n_embd, n_vocab);
    for (size_t i = 0; i < tokens.size(); i++) {
        const float * row = llama_get_logits_ith(ctx, static_cast<int32_t>(i));
        std::printf(i ? ",[" : "[");
        for (int v = 0; v < n_vocab; v++) {
            std::printf(v ? ",%.9g" : "%.9g", row[v]);
        }
        std::printf("]");
    }
    std::printf("]}\n");

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
