"""Greedy generation in onnxruntime-genai from given token ids, for tests/it/package_genai.rs.

Reads a JSON request on stdin:
  {"model": PACKAGE_DIR, "runs": [{"prompt_ids": [...], "max_new_tokens": N, "inputs": {"steer.coeff.0": 8.0}}]}
and writes {"onnxruntime_genai": VERSION, "runs": [{"tokens": [...], "last_logits": [[...], ...]}]} to
stdout: the new tokens and, for each, the logits row it was chosen from (the last position).
Only the runtime runs here; the test compares the output with the transformers goldens.
Needs onnxruntime-genai 0.18.0 (.ci/run installs it into .venv/genai).
"""

import json
import sys

import numpy as np
import onnxruntime_genai as og


def main():
    request = json.load(sys.stdin)
    model = og.Model(request["model"])
    runs = []
    for run in request["runs"]:
        ids = run["prompt_ids"]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + run["max_new_tokens"], do_sample=False)
        generator = og.Generator(model, params)
        # genai keeps a pointer to each array and reads it on every step, it does not copy it:
        # the arrays must live until the generation ends (a temporary gives garbage after step 0).
        fed = {name: np.array(value, dtype=np.float32) for name, value in run["inputs"].items()}
        for name, array in fed.items():
            generator.set_model_input(name, array)
        generator.append_tokens(ids)
        tokens, logits = [], []
        while not generator.is_done():
            generator.generate_next_token()
            step = generator.get_output("logits")
            logits.append(step.reshape(-1, step.shape[-1])[-1].tolist())
            tokens.append(int(generator.get_next_tokens()[0]))
        del fed
        runs.append({"tokens": tokens, "last_logits": logits})
    json.dump({"onnxruntime_genai": og.__version__, "runs": runs}, sys.stdout)


if __name__ == "__main__":
    main()
