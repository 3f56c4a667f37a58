"""Markdown tables from benches/results/*.jsonl (written by benches/run.sh via benches/measure.py).

    python3 benches/report.py [benches/results]

Ratios compare records of the same results file (one run.sh invocation): baseline / ours for time
(how many times faster we are) and ours / baseline for memory. `--gpu`: the tables of
benches/gpu.sh (results/gpu.jsonl, gpu.numerics.txt) only. Plain Python 3.
"""

import json
import os
import re
import statistics
import sys

QUESTIONS = 200  # benches/tasks: bench_mmlu, 2 subjects x 100 test documents


def load(path):
    if not os.path.exists(path):
        return {}
    recs = {}
    for line in open(path):
        r = json.loads(line)
        recs[r["name"]] = r
    return recs


def fmt_s(x):
    return "-" if x is None else (f"{x:.2f} s" if x < 100 else f"{x:.0f} s")


def fmt_mib(x):
    return "-" if x is None else (f"{x:.0f} MiB" if x < 10240 else f"{x / 1024:.1f} GiB")


def runs(r):
    ok = [x for x in r["runs"] if x["rc"] == 0]
    loads = [x.get("loadavg_before", 0) for x in r["runs"]]
    s = f"{len(ok)}" + ("" if r["ok"] else f" (failed: rc {r['runs'][-1]['rc']})")
    return s, max(loads) if loads else 0


def cpu(r):
    ok = [x["user_s"] + x["sys_s"] for x in r["runs"] if x["rc"] == 0]
    return fmt_s(statistics.median(ok)) if ok else "-"


def header(recs):
    any_r = next(iter(recs.values()))
    m = any_r["machine"]
    return f"{m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB RAM; {any_r['date']}"


def export_table(recs):
    print(f"### export ({header(recs)})\n")
    print("| command | runs | max load | median wall | median CPU (user+sys) | median peak RSS "
          "| optimum time / ours | ours RSS / optimum |")
    print("|---|---|---|---|---|---|---|---|")
    pairs = {"ours 2b-L": "optimum 2b-L", "ours 100m f32": "optimum 100m f32", "ours 2b f32": "optimum 2b f32"}
    for name, r in recs.items():
        n, load = runs(r)
        ratio_t = ratio_m = ""
        if name.startswith("ours"):
            base = name.replace("ours", "optimum", 1)
            b = recs.get(base)
            if b and b["ok"] and r["ok"]:
                ratio_t = f"{b['median_wall_s'] / r['median_wall_s']:.1f}x"
                q = r['median_rss_mib'] / b['median_rss_mib']
                ratio_m = f"{q:.2f}x" if q >= 0.1 else f"1/{1 / q:.0f}"
        print(f"| {name} | {n} | {load:.1f} | {fmt_s(r['median_wall_s'])} | {cpu(r)} "
              f"| {fmt_mib(r['median_rss_mib'])} | {ratio_t} | {ratio_m} |")
    print()


def patch_table(recs):
    print(f"### patch ({header(recs)})\n")
    print("| command | runs | max load | median wall | median CPU (user+sys) | median peak RSS "
          "| python-full / this (time) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in recs.items():
        n, load = runs(r)
        ratio = ""
        size = name.split()[2] if name.startswith("ours") else name.split()[3]
        base = next((b for m, b in recs.items() if "full" in m and m.split()[3] == size and b["ok"]), None)
        if base and r["ok"]:
            ratio = f"{base['median_wall_s'] / r['median_wall_s']:.0f}x"
        print(f"| {name} | {n} | {load:.1f} | {fmt_s(r['median_wall_s'])} | {cpu(r)} "
              f"| {fmt_mib(r['median_rss_mib'])} | {ratio} |")
    print()


def gflops(res_dir):
    p = os.path.join(res_dir, "sgemm.json")
    if not os.path.exists(p):
        return None
    return json.load(open(p))


def eval_table(recs, res_dir, floor=True):
    print(f"### eval ({header(recs)})\n")
    print("Whole command, end to end (process start to exit), median of the runs:\n")
    print("| model | tool | runs | max load | wall | CPU (user+sys) | questions/s | tokens/s | peak RSS "
          "| this time / ours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    models = []
    for name in recs:
        parts = name.split()
        if parts[0] == "ours" and parts[1] == "eval" and "cached" not in name:
            models.append((parts[2], parts[3].rstrip(",")))
    rows2 = []
    for model, bs in models:
        ours = recs[f"ours eval {model} {bs}"]
        cached = recs.get(f"ours eval {model} {bs}, all answers cached")
        tokens = ours["runs"][0].get("eval", {}).get("tokens")
        for attn in ("eager", "sdpa"):
            lm = recs.get(f"lm-eval hf {model} {bs} {attn}")
            if lm:
                ft = [x["scoring"]["forwards_tokens"] for x in lm["runs"] if "scoring" in x]
                if ft and tokens and ft[0] != tokens:
                    print(f"<!-- token counts differ: ours {tokens}, lm-eval {ft[0]} -->")
        for label, r in [("sae-onnx", ours)] + [(f"lm-eval hf ({a})", recs.get(f"lm-eval hf {model} {bs} {a}"))
                                                for a in ("eager", "sdpa")]:
            if not r:
                continue
            n, load = runs(r)
            w = r["median_wall_s"]
            ratio = "" if label == "sae-onnx" or not r["ok"] or not ours["ok"] else \
                f"{w / ours['median_wall_s']:.1f}x"
            qps = f"{QUESTIONS / w:.1f}" if w else "-"
            tps = f"{tokens / w:.0f}" if w and tokens else "-"
            print(f"| {model} {bs} | {label} | {n} | {load:.1f} | {fmt_s(w)} | {cpu(r)} | {qps} | {tps} "
                  f"| {fmt_mib(r['median_rss_mib'])} | {ratio} |")
        # scoring phase
        if cached and cached["ok"] and ours["ok"]:
            s_ours = ours["median_wall_s"] - cached["median_wall_s"]
            rows2.append((model, bs, "sae-onnx (whole - all-cached rerun: session + scoring)", s_ours, tokens,
                          cached["median_wall_s"]))
        for attn in ("eager", "sdpa"):
            lm = recs.get(f"lm-eval hf {model} {bs} {attn}")
            if lm and lm["ok"]:
                sc = [x["scoring"] for x in lm["runs"] if "scoring" in x]
                if sc:
                    rows2.append((model, bs, f"lm-eval hf ({attn}), _loglikelihood_tokens",
                                  statistics.median(s["scoring_s"] for s in sc), tokens,
                                  statistics.median(s["total_in_python_s"] - s["scoring_s"] for s in sc)))
    print()
    print("Scoring phase only (median of the same runs):\n")
    print("| model | tool / what is timed | scoring | questions/s | tokens/s | rest of the command | this scoring / ours |")
    print("|---|---|---|---|---|---|---|")
    ours_s = {}
    for model, bs, label, s, tokens, rest in rows2:
        if label.startswith("sae-onnx"):
            ours_s[(model, bs)] = s
        ratio = "" if label.startswith("sae-onnx") or (model, bs) not in ours_s else \
            f"{s / ours_s[(model, bs)]:.1f}x"
        print(f"| {model} {bs} | {label} | {fmt_s(s)} | {QUESTIONS / s:.1f} | {tokens / s:.0f} | {fmt_s(rest)} "
              f"| {ratio} |")
    print()
    g = gflops(res_dir) if floor else None
    if g:
        print("Physical floor: 2 x parameters x tokens FLOPs at the measured float32 matmul rate "
              "(benches/sgemm.py):\n")
        print("| library/threads | " + " | ".join(f"{k} GFLOP/s" for k in next(iter(g.values()))) + " |")
        print("|---|" + "---|" * len(next(iter(g.values()))))
        for k, v in g.items():
            print(f"| {k} | " + " | ".join(f"{x:.1f}" for x in v.values()) + " |")
        print()
        rate = max(v["mlp"] for k, v in g.items() if k.endswith("/2t")) * 1e9
        print(f"| model | parameters | tokens | FLOPs | floor at {rate / 1e9:.0f} GFLOP/s (2 threads) | "
              "sae-onnx scoring / floor |")
        print("|---|---|---|---|---|---|")
        for model, bs in models:
            ours = recs[f"ours eval {model} {bs}"]
            tokens = ours["runs"][0].get("eval", {}).get("tokens")
            params = PARAMS.get(model)
            if not params or not tokens:
                continue
            fl = 2 * params * tokens
            floor = fl / rate
            s = ours_s.get((model, bs))
            rr = f"{s / floor:.1f}x" if s else "-"
            print(f"| {model} | {params / 1e6:.2f}M | {tokens} | {fl / 1e12:.3f} T | {floor:.3f} s | {rr} |")
        print()


def params_of(cfg_path):
    if not os.path.exists(cfg_path):
        return None
    return params_from(json.load(open(cfg_path)))


def params_from(c):
    h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    layer = h * nh * hd * 2 + 2 * h * nkv * hd + 3 * h * i + 4 * h
    return v * h + L * layer + h  # tied head counted once (it is applied: 2 FLOPs per weight per token)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# benches/run.sh's and gpu.sh's scratch folder (their default), where the checkpoints are
BENCH_TMP = os.environ.get("BENCH_TMP") or os.path.join(os.environ.get("TMPDIR") or "/tmp", "sae-onnx-bench")
PARAMS = {
    "tiny": params_of(os.path.join(REPO, "models", "tiny-gemma2", "config.json")),
    "100m": params_of(os.path.join(BENCH_TMP, "ckpt", "gemma2-100m", "config.json")),
}


NUMERICS = "Numerics (--log_samples, every choice's loglikelihood):"


def print_list(path, title=None):
    """A results text file (one finding per line) as a Markdown list, under `title`."""
    if not os.path.exists(path):
        return
    if title:
        print(title + "\n")
    for line in open(path):
        print(f"- {line.strip()}")
    print()


def eval5_table(recs, res_dir):
    """benches/run.sh eval5: the 100m model 5-shot, ours on both graphs against lm-eval hf eager."""
    print(f"### eval, 100m, 5-shot ({header(recs)})\n")
    print("| tool | runs | max load | wall | scoring phase | tokens computed | lm-eval / this (wall) "
          "| lm-eval / this (scoring) |")
    print("|---|---|---|---|---|---|---|---|")
    lm = next((r for n, r in recs.items() if n.startswith("lm-eval")), None)
    lm_sc = None
    if lm:
        sc = [x["scoring"]["scoring_s"] for x in lm["runs"] if x["rc"] == 0 and "scoring" in x]
        lm_sc = statistics.median(sc) if sc else None
    for name, r in recs.items():
        n, load = runs(r)
        ok = [x for x in r["runs"] if x["rc"] == 0]
        if name.startswith("ours"):
            ev = [x["eval"] for x in ok if "eval" in x]
            sc = statistics.median(e.get("scoring_s", e["seconds"]) for e in ev) if ev else None
            computed = "-"
            if ev and ("shared_prefix_tokens" in ev[0] or "kv-cache" not in name):
                computed = str(ev[0]["tokens"] - ev[0].get("shared_prefix_tokens", 0))
            log_dir = os.path.join(res_dir, "eval5.logs")
            for f in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
                if f.startswith(name) and f.endswith("run1.log"):
                    m = re.search(r"\((\d+) tokens(?:, (\d+) of them from shared-prefix caches)?\)",
                                  open(os.path.join(log_dir, f)).read())
                    if m:
                        computed = str(int(m.group(1)) - int(m.group(2) or 0))
            rw = f"{lm['median_wall_s'] / r['median_wall_s']:.1f}x" if lm and lm["ok"] and r["median_wall_s"] else "-"
            rs = f"{lm_sc / sc:.1f}x" if lm_sc and sc else "-"
        else:
            sc, computed, rw, rs = lm_sc, "all", "", ""
        label = name.replace(" bs16 5-shot", "").replace(" 100m", "")
        print(f"| {label} | {n} | {load:.1f} | {fmt_s(r['median_wall_s'])} | {fmt_s(sc)} | {computed} | {rw} | {rs} |")
    print()
    print_list(os.path.join(res_dir, "eval5.numerics.txt"))


def gpu_table(recs, res_dir):
    """benches/gpu.sh's records: per model and dtype, sae-onnx (CUDA provider) vs lm-eval hf (eager)."""
    rate = {}
    mm = os.path.join(res_dir, "gpu.matmul.json")
    if os.path.exists(mm):
        rate = json.load(open(mm))
    ck = BENCH_TMP
    params = {"100m": params_of(os.path.join(ck, "ckpt", "gemma2-100m", "config.json")),
              "2b": params_of(os.path.join(ck, "ckpt", "gemma2-2b-tok", "config.json"))}
    # Without the checkpoints (reading committed results): the presets they were made from.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from make_checkpoint import PRESETS  # imports numpy
    except ImportError:
        PRESETS = {}
    for name, preset in PRESETS.items():
        if params.get(name) is None:
            params[name] = params_from(preset)
    print(f"### eval on the GPU ({header(recs)})\n")
    print("| model | tool | runs | wall (median) | scoring phase | tokens | scoring tokens/s | lm-eval / ours (wall) "
          "| lm-eval / ours (scoring) | scoring / FLOP floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in recs.items():
        parts = name.split()
        if parts[:2] != ["ours", "eval"]:
            continue
        model, rest = parts[2], " ".join(parts[3:])
        lm = recs.get(f"lm-eval hf {model} {rest} eager")
        ok = [x for x in r["runs"] if x["rc"] == 0 and "eval" in x]
        tokens = ok[0]["eval"]["tokens"] if ok else None
        # The scoring phase alone when the eval line reports it (opening the session apart).
        ours_sc = statistics.median(x["eval"].get("scoring_s", x["eval"]["seconds"]) for x in ok) if ok else None
        # f16 runs on the tensor cores at bf16's rate; TF32's rate was not measured (no floor).
        dtype = "bf16" if ("bf16" in model or "f16" in model) else (None if "tf32" in model else "f32")
        p = params.get(model.split("-")[0])
        floor = 2 * p * tokens / (rate[dtype] * 1e12) if p and tokens and dtype in rate else None
        rows = [("sae-onnx (CUDA EP)", r, ours_sc)]
        if lm:
            sc = [x["scoring"]["scoring_s"] for x in lm["runs"] if x["rc"] == 0 and "scoring" in x]
            rows.append(("lm-eval hf (eager)", lm, statistics.median(sc) if sc else None))
        for label, rec, sc in rows:
            n, _ = runs(rec)
            w = rec["median_wall_s"]
            is_ours = label.startswith("sae-onnx")
            rw = "" if is_ours or not (w and r["median_wall_s"]) else f"{w / r['median_wall_s']:.1f}x"
            rs = "" if is_ours or not (sc and ours_sc) else f"{sc / ours_sc:.1f}x"
            fl = f"{sc / floor:.1f}x" if sc and floor else "-"
            tps = f"{tokens / sc:.0f}" if sc and tokens else "-"
            print(f"| {model} {rest} | {label} | {n} | {fmt_s(w)} | {fmt_s(sc)} | {tokens or '-'} | {tps} | {rw} "
                  f"| {rs} | {fl} |")
    if rate:
        print(f"\nFLOP floor: 2 x parameters x tokens at torch's measured 8192^3 matmul rate "
              f"(f32 {rate.get('f32', 0):.1f}, bf16 {rate.get('bf16', 0):.1f} TFLOP/s).\n")


def main():
    args = [a for a in sys.argv[1:] if a != "--gpu"]
    res = args[0] if args else os.path.join(REPO, "benches", "results")
    if "--gpu" in sys.argv:
        recs = load(os.path.join(res, "gpu.jsonl"))
        if recs:
            gpu_table(recs, res)
        print_list(os.path.join(res, "gpu.numerics.txt"), NUMERICS)
        return
    for sec, fn in (("export", export_table), ("patch", patch_table)):
        recs = load(os.path.join(res, f"{sec}.jsonl"))
        if recs:
            fn(recs)
        print_list(os.path.join(res, f"{sec}.rss_split.txt"),
                   "Peak resident pages by kind (benches/rss_split.py, one extra run):")
    recs = load(os.path.join(res, "eval.jsonl"))
    if recs:
        eval_table(recs, res)
    recs = load(os.path.join(res, "eval5.jsonl"))
    if recs:
        eval5_table(recs, res)
    print_list(os.path.join(res, "eval.numerics.txt"), NUMERICS)


if __name__ == "__main__":
    main()
