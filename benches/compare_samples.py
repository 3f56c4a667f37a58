"""Compare two --log_samples outputs (sae-onnx eval vs lm-eval): same documents, same answers?

    python3 benches/compare_samples.py DIR_A DIR_B [--name NAME] [--tol 1e-3]

Finds samples_<task>_<date>.jsonl under each folder (recursively; the newest per task), matches
documents by (task, doc_id), and prints one line: documents compared, max |loglikelihood A - B| over
every choice, how many documents' predicted answers (argmax) differ, and whether max |diff| <= tol.
Exit code 1 if the document sets differ or the tolerance is exceeded. Plain Python 3.
"""

import argparse
import glob
import json
import os
import re
import sys


def load(folder):
    files = sorted(glob.glob(os.path.join(folder, "**", "samples_*.jsonl"), recursive=True))
    by_task = {}
    for f in files:  # names sort by date within a task: the last one wins
        task = re.sub(r"_\d{4}-\d{2}-\d{2}T.*$", "", os.path.basename(f)[len("samples_"):-len(".jsonl")])
        by_task[task] = f
    docs = {}
    for task, f in by_task.items():
        for line in open(f):
            s = json.loads(line)
            lls = [float(r[0]) for r in s["filtered_resps"]]
            docs[(task, s["doc_id"])] = lls
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--name", default="")
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()
    da, db = load(a.a), load(a.b)
    if not da or set(da) != set(db):
        print(f"{a.name}: document sets differ ({len(da)} vs {len(db)})")
        return 1
    worst, flips = 0.0, 0
    for k in da:
        x, y = da[k], db[k]
        worst = max(worst, max(abs(p - q) for p, q in zip(x, y)))
        flips += x.index(max(x)) != y.index(max(y))
    ok = worst <= a.tol
    print(f"{a.name}: {len(da)} documents, max |dloglik| = {worst:.2e}, argmax differs on {flips}, "
          f"{'OK' if ok else 'FAIL'} (tol {a.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
