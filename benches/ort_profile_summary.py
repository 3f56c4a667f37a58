"""Sums an ONNX Runtime profile (SAE_ONNX_ORT_PROFILE=prefix sae-onnx ...) by operator and provider.

    python3 benches/ort_profile_summary.py PROFILE.json [--top 25]

Prints the session-level events first (model loading and session initialization: where opening a
model goes), then, per (op type, execution provider), the number of kernel runs and their total time,
largest first, and the share of kernel time spent outside the requested device's provider: where a GPU run
is slower than it should be, nodes that fell back to the CPU show up here. Plain Python 3.
"""

import argparse
import collections
import json

ap = argparse.ArgumentParser()
ap.add_argument("profile")
ap.add_argument("--top", type=int, default=25)
a = ap.parse_args()
events = json.load(open(a.profile))
by = collections.defaultdict(lambda: [0, 0])
total = 0
for e in events:
    if e.get("cat") == "Session":
        print(f"session: {e.get('name')}: {e.get('dur', 0) / 1e6:.3f} s")
for e in events:
    args = e.get("args", {})
    if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
        continue
    key = (args.get("op_name", "?"), args.get("provider", "?"))
    by[key][0] += 1
    by[key][1] += e.get("dur", 0)
    total += e.get("dur", 0)
providers = collections.Counter()
for (op, prov), (n, dur) in by.items():
    providers[prov] += dur
print(f"kernel time {total / 1e6:.3f} s in {sum(n for n, _ in by.values())} kernel runs")
for prov, dur in providers.most_common():
    print(f"  {prov}: {dur / 1e6:.3f} s ({100 * dur / max(total, 1):.1f}%)")
print(f"{'op':<28} {'provider':<26} {'runs':>8} {'total s':>9} {'share':>6}")
for (op, prov), (n, dur) in sorted(by.items(), key=lambda kv: -kv[1][1])[: a.top]:
    print(f"{op:<28} {prov:<26} {n:>8} {dur / 1e6:>9.3f} {100 * dur / max(total, 1):>5.1f}%")
