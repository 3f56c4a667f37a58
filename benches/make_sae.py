"""A SAELens-format SAE with random weights, and a steer.csv that uses it (for the patch benchmark).

    python benches/make_sae.py OUT_DIR [--d-in 2304] [--d-sae 16] [--hook blocks.20.hook_resid_post]

Writes OUT_DIR/sae/cfg.json (SAELens v6: metadata.hook_name, d_in, d_sae, architecture standard),
OUT_DIR/sae/sae_weights.safetensors (float32 W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec,
seeded N(0, 1/d_in)), and OUT_DIR/steer.csv (latent 3 x 8.0, SAE given as the relative folder "sae").
Needs numpy and safetensors (the reference venv has both).
"""

import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=16)
    ap.add_argument("--hook", default="blocks.20.hook_resid_post")
    ap.add_argument("--latent", type=int, default=3)
    ap.add_argument("--coef", type=float, default=8.0)
    args = ap.parse_args()

    rng = np.random.default_rng(7)
    d, k = args.d_in, args.d_sae
    sae = os.path.join(args.out, "sae")
    os.makedirs(sae, exist_ok=True)
    tensors = {
        "W_enc": (rng.standard_normal((d, k)) / np.sqrt(d)).astype(np.float32),
        "W_dec": (rng.standard_normal((k, d)) / np.sqrt(d)).astype(np.float32),
        "b_enc": np.zeros(k, np.float32),
        "b_dec": (rng.standard_normal(d) * 0.01).astype(np.float32),
    }
    save_file(tensors, os.path.join(sae, "sae_weights.safetensors"))
    cfg = {
        "d_in": d,
        "d_sae": k,
        "dtype": "float32",
        "device": "cpu",
        "architecture": "standard",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": args.hook,
                     "model_name": "random benchmark SAE (benches/make_sae.py)"},
    }
    with open(os.path.join(sae, "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "steer.csv"), "w") as f:
        f.write("latent_idx,steering_coefficient,sae_release,sae_id,description\n")
        f.write(f"{args.latent},{args.coef},sae,,random benchmark latent\n")
    print(f"wrote {sae} (d_in {d}, d_sae {k}, {args.hook}) and {os.path.join(args.out, 'steer.csv')}")


if __name__ == "__main__":
    main()
