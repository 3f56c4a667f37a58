"""Baseline for `sae-onnx patch`: the same edit with the Python `onnx` package (1.23.2).

    python benches/onnx_patch.py MODEL.onnx STEER_DIR OUT.onnx [--lazy]

STEER_DIR is what benches/make_sae.py wrote (steer.csv + sae/). The edit is sae-onnx's: read the plan's
one row (latent, coefficient, SAE folder), take coefficient * W_dec[latent] (float32 [d_in]) from
sae_weights.safetensors, and splice `hook' = hook + vector` after the SAE's hook tensor
(cfg.json metadata.hook_name, e.g. blocks.20.hook_resid_post, which is a tensor name in sae-onnx's
graphs): every consumer of the hook tensor reads the Add's output instead.

Default (what the benchmark calls "python onnx"): onnx.load with its external data (every weight read
into memory), edit, onnx.save_model(save_as_external_data=True, one data file) - a full copy.
--lazy: onnx.load(load_external_data=False), edit, onnx.save: the weights stay where they are, and OUT
must be in MODEL's folder so that the relative data location still resolves (what a careful user does).
"""

import argparse
import csv
import json
import os
import time

import numpy as np
import onnx
from onnx import helper, numpy_helper
from safetensors.numpy import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("steer_dir")
    ap.add_argument("out")
    ap.add_argument("--lazy", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()

    with open(os.path.join(a.steer_dir, "steer.csv")) as f:
        row = next(csv.DictReader(f))
    sae_dir = os.path.join(a.steer_dir, row["sae_release"].strip())
    cfg = json.load(open(os.path.join(sae_dir, "cfg.json")))
    hook = cfg["metadata"]["hook_name"]
    w_dec = load_file(os.path.join(sae_dir, "sae_weights.safetensors"))["W_dec"]
    vec = (np.float32(float(row["steering_coefficient"])) * w_dec[int(row["latent_idx"])]).astype(np.float32)

    if a.lazy:
        model = onnx.load(a.model, load_external_data=False)
    else:
        model = onnx.load(a.model)  # load_external_data=True: all weights into memory
    t_load = time.perf_counter() - t0

    g = model.graph
    new_out = hook + ".steered"
    consumers = 0
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == hook:
                node.input[i] = new_out
                consumers += 1
    graph_output = any(o.name == hook for o in g.output)
    assert consumers or graph_output, f"{hook}: no consumer in the graph"
    g.initializer.append(numpy_helper.from_array(vec, hook + ".steer_vector"))
    add = helper.make_node("Add", [hook, hook + ".steer_vector"], [new_out], name=hook + ".steer")
    # keep a topological order: the Add goes right after the hook's producer
    pos = next(i for i, n in enumerate(g.node) if hook in n.output)
    g.node.insert(pos + 1, add)
    t_edit = time.perf_counter() - t0 - t_load

    if a.lazy:
        assert os.path.dirname(os.path.abspath(a.out)) == os.path.dirname(os.path.abspath(a.model)), \
            "--lazy: OUT must be beside MODEL (relative external data locations)"
        onnx.save(model, a.out)
    else:
        onnx.save_model(model, a.out, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(a.out) + ".data", size_threshold=1024)
    t_save = time.perf_counter() - t0 - t_load - t_edit
    print(f"python onnx patch ({'lazy' if a.lazy else 'full'}): {hook} ({consumers} consumers), "
          f"|v| = {np.linalg.norm(vec):.3f}; load {t_load:.2f}s, edit {t_edit:.2f}s, save {t_save:.2f}s")


if __name__ == "__main__":
    main()
