"""A random SAELens-format SAE for the demo model (models/tiny-gemma2, d_model 128), at
blocks.2.hook_resid_post, and the steer.csv the README's demo uses. Random weights: it shows the
pipeline, not a real feature.

Writes sae/cfg.json, sae/sae_weights.safetensors (W_enc [128, 32], W_dec [32, 128] with unit rows,
b_enc, b_dec, threshold) and steer.csv. Deterministic (seed 0).
Regenerate: $PYTHON models/tiny-gemma2/make_demo_sae.py  (numpy, safetensors)
($PYTHON: the reference interpreter, with tests/fixtures/requirements.txt installed; default python3)
"""
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

here = Path(__file__).parent
d_in, d_sae = 128, 32
rng = np.random.default_rng(0)
w_dec = rng.standard_normal((d_sae, d_in)).astype(np.float32)
w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
tensors = {
    "W_enc": np.ascontiguousarray(w_dec.T),
    "W_dec": w_dec,
    "b_enc": np.zeros(d_sae, np.float32),
    "b_dec": np.zeros(d_in, np.float32),
    "threshold": np.full(d_sae, 0.1, np.float32),
}
(here / "sae").mkdir(exist_ok=True)
save_file(tensors, str(here / "sae" / "sae_weights.safetensors"), metadata={"format": "pt"})
cfg = {
    "d_in": d_in,
    "d_sae": d_sae,
    "dtype": "float32",
    "architecture": "jumprelu",
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.2.hook_resid_post", "model_name": "tiny-gemma2"},
}
(here / "sae" / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
# 150: the random model's greedy text ("The dog sees the the the ...") changes only from about
# 125 on (measured with `sae-onnx generate --compare`, latent 7); 150 changes it from the first
# new token, so the demo shows steering rather than two identical continuations.
(here / "steer.csv").write_text(
    "latent_idx,steering_coefficient,sae_release,sae_id,description\n"
    "7, 150.0,sae,,demo latent 7 (random SAE; large enough to change the greedy text)\n"
)
print("wrote", here / "sae", "and", here / "steer.csv")
