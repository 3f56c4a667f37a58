"""The bundled demo model: a tiny Gemma 2 with RANDOM weights (for the demo and the tests only).

Produces, next to this script:
  config.json, generation_config.json   Gemma2ForCausalLM: hidden 128, 4 layers, intermediate 256,
                                        4 heads, 2 kv heads, head_dim 32, sliding_window 16,
                                        attn/final softcaps 50/30, vocab 512, tied embeddings
  model.safetensors                     bfloat16 (save_pretrained, safe_serialization)
  tokenizer.json, tokenizer_config.json, special_tokens_map.json   from tests/fixtures/tokenizer/

Weights are drawn like the test fixtures' (tests/fixtures/gemma/tiny_gemma.py, seed 42): matrices
N(0, (4/sqrt(fan_in))^2), norm weights N(0, 0.3^2), so the softcaps matter.

Pinned versions: transformers==4.57.6, torch==2.15.0, safetensors==0.8.0 (tests/fixtures/requirements.txt).
Regenerate (deterministic):
  $PYTHON models/tiny-gemma2/make_demo.py
  ($PYTHON: the reference interpreter, with tests/fixtures/requirements.txt installed; default python3)
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures", "gemma"))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import tiny_gemma as tg  # noqa: E402

SEED = 42


def main():
    tg.setup_torch()
    tok = AutoTokenizer.from_pretrained(tg.TOKENIZER_DIR)
    cfg = tg.make_config(
        "gemma2",
        len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=16,
        max_position_embeddings=1024,
    )
    model = tg.build_model("gemma2", cfg, SEED)
    model = model.to(torch.bfloat16)
    model.save_pretrained(HERE, safe_serialization=True)
    tg.copy_tokenizer(HERE)
    for name in ["config.json", "generation_config.json", "model.safetensors"] + tg.TOKENIZER_FILES:
        p = os.path.join(HERE, name)
        print(f"wrote {os.path.relpath(p)} ({os.path.getsize(p)} bytes)")

    # reload as a user would, and show that it runs and that the softcaps matter
    m = AutoModelForCausalLM.from_pretrained(HERE, attn_implementation="eager", dtype="auto").eval()
    assert m.dtype == torch.bfloat16, m.dtype
    m32 = AutoModelForCausalLM.from_pretrained(HERE, attn_implementation="eager", dtype=torch.float32).eval()
    enc = tok(["The dog sees a cat near the river. Question: Which answer?\nA. dog\nB. cat\nAnswer:"],
              return_tensors="pt")
    with torch.no_grad(), tg.softcap_probe(m32, "gemma2") as stats:
        l32 = m32(**enc).logits
    with torch.no_grad():
        l16 = m(**enc).logits.float()
        gen = m32.generate(**enc, max_new_tokens=8, do_sample=False)
    print(f"  prompt of {enc['input_ids'].shape[1]} tokens; max |attention score| before softcap = "
          f"{stats['attn']:.2f} (cap 50), max |logit| before softcap = {stats['logit']:.2f} (cap 30)")
    print(f"  bf16 vs f32 (same bf16 weights) logits: max |diff| = {(l16 - l32).abs().max().item():.4f}")
    print(f"  greedy continuation (f32): {tok.decode(gen[0, enc['input_ids'].shape[1]:])!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
