"""`lm-eval run ARGS...` exactly (lm_eval.__main__.cli_evaluate), plus passive timers.

    python benches/lmeval_timed.py run --model hf --model_args ... --tasks ... (as lm-eval)

Wraps, without changing them, HFLM.__init__ (model load), HFLM.loglikelihood (tokenize + score) and
HFLM._loglikelihood_tokens (the scoring loop: batching, forwards, log-softmax, gathers). If
$BENCH_SCORING_JSON is set, writes {"load_s", "loglikelihood_s", "scoring_s", "requests",
"forwards_tokens"} there at exit; "forwards_tokens" counts the tokens of the deduplicated inputs
(lm-eval groups single-token continuations sharing a context into one forward, as sae-onnx does).
"""

import atexit
import json
import os
import sys
import time

T0 = time.perf_counter()
stats = {"load_s": 0.0, "loglikelihood_s": 0.0, "scoring_s": 0.0, "requests": 0, "forwards_tokens": 0}


def main():
    import lm_eval.models.huggingface as hfm
    from lm_eval.__main__ import cli_evaluate

    stats["import_s"] = time.perf_counter() - T0
    orig_init = hfm.HFLM.__init__
    orig_ll = hfm.HFLM.loglikelihood
    orig_llt = hfm.HFLM._loglikelihood_tokens

    def init(self, *a, **k):
        t = time.perf_counter()
        orig_init(self, *a, **k)
        stats["load_s"] += time.perf_counter() - t

    def ll(self, requests, *a, **k):
        t = time.perf_counter()
        out = orig_ll(self, requests, *a, **k)
        stats["loglikelihood_s"] += time.perf_counter() - t
        stats["requests"] += len(requests)
        return out

    def llt(self, requests, *a, **k):
        seen = set()
        for _, ctx, cont in requests:
            key = tuple(ctx + cont[:-1])
            if key not in seen:
                seen.add(key)
                stats["forwards_tokens"] += len(ctx) + len(cont) - 1
        t = time.perf_counter()
        out = orig_llt(self, requests, *a, **k)
        stats["scoring_s"] += time.perf_counter() - t
        return out

    hfm.HFLM.__init__ = init
    hfm.HFLM.loglikelihood = ll
    hfm.HFLM._loglikelihood_tokens = llt

    path = os.environ.get("BENCH_SCORING_JSON")
    if path:
        def dump():
            stats["total_in_python_s"] = time.perf_counter() - T0
            with open(path, "w") as f:
                json.dump(stats, f)
        atexit.register(dump)
    sys.argv = ["lm-eval"] + sys.argv[1:]
    cli_evaluate()


if __name__ == "__main__":
    main()
