"""Benchmark checkpoints: Gemma 2 in the Hugging Face layout with SEEDED RANDOM weights.

    python benches/make_checkpoint.py PRESET OUT_DIR [--seed N]

Presets (all Gemma2ForCausalLM, bfloat16 on disk, tied embeddings):
  100m   hidden 768, 12 layers, 12 heads, 4 kv heads, head_dim 64, intermediate 3072, vocab 512
         (the tiny tokenizer of tests/fixtures/tokenizer, copied in): 104.2M parameters, 208 MB.
         The parameters are in the layers, not in the embedding, so that eval timings mean something
         while the tokenizer stays the tiny one (a 256000-token vocabulary needs a real tokenizer).
  2b     gemma-2-2b's shape: hidden 2304, 26 layers, 8 heads, 4 kv heads, head_dim 256,
         intermediate 9216, vocab 256000: 2.61B parameters, 5.2 GB in 3 shards + index.json.
         No tokenizer (its vocabulary has no tokenizer here): for export/patch costs, unless
         --with-tokenizer copies the tiny one in (benches/gpu.sh evaluates that on a GPU).
  2b-L<n> the same with n layers (the largest shape a baseline fits in memory, if 26 do not).

Nothing is instantiated: transformers builds the config and lists the parameter names and shapes on
the `meta` device, then every tensor is drawn in chunks of 16M values (numpy PCG64, seeded from
(seed, tensor index)), rounded to bfloat16 (round-to-nearest-even, as torch does) and appended to
the safetensors file. Peak memory stays ~300 MB whatever the model size.

Values: matrices (embedding included) ~ N(0, 1/fan_in), RMSNorm weights ~ N(0, 0.1^2) (Gemma
scales by 1 + weight). Deterministic: the same preset and seed give the same bytes.
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TOKENIZER_DIR = os.path.join(REPO, "tests", "fixtures", "tokenizer")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
CHUNK = 1 << 24  # values per draw
SHARD_BYTES = 2 * 1024**3  # 2b preset: shards of at most 2 GiB

GEMMA2_COMMON = dict(
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    hidden_activation="gelu_pytorch_tanh",
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    max_position_embeddings=8192,
    sliding_window=4096,
)

PRESETS = {
    "100m": dict(
        vocab_size=512,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        query_pre_attn_scalar=64,
    ),
    "2b": dict(
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
    ),
}


def preset(name):
    if name in PRESETS:
        return dict(PRESETS[name])
    if name.startswith("2b-L") and name[4:].isdigit():
        kw = dict(PRESETS["2b"])
        kw["num_hidden_layers"] = int(name[4:])
        return kw
    sys.exit(f"unknown preset {name!r}: 100m, 2b or 2b-L<layers>")


def bf16_bits(x):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (finite inputs)."""
    u = x.view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


def write_tensor(f, shape, std, seed, index):
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))
    n = math.prod(shape)
    done = 0
    while done < n:
        m = min(CHUNK, n - done)
        x = rng.standard_normal(m, dtype=np.float32)
        x *= np.float32(std)
        f.write(bf16_bits(x).tobytes())
        done += m


def header_bytes(entries):
    """safetensors header for [(name, shape, offset, nbytes)], padded to 8 bytes with spaces."""
    h = {"__metadata__": {"format": "pt"}}
    for name, shape, off, nb in entries:
        h[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nb]}
    text = json.dumps(h, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--with-tokenizer", action="store_true",
                    help="copy the tiny tokenizer in whatever the vocabulary (2b: an eval-able model whose LM head "
                         "has gemma-2-2b's 256000 rows; the tokenizer only ever produces ids < 512)")
    args = ap.parse_args()

    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    kw = dict(GEMMA2_COMMON)
    kw.update(preset(args.preset))
    cfg = Gemma2Config(**kw)
    cfg.dtype = torch.bfloat16  # written as "dtype": "bfloat16", as real Gemma 2 configs say
    cfg.architectures = ["Gemma2ForCausalLM"]
    with torch.device("meta"):
        model = Gemma2ForCausalLM(cfg)
    params = [(n, tuple(p.shape)) for n, p in model.named_parameters()]  # tied lm_head listed once
    assert params[0][0] == "model.embed_tokens.weight", params[0]
    total = sum(math.prod(s) for _, s in params)

    os.makedirs(args.out, exist_ok=True)
    cfg.save_pretrained(args.out)
    tok = kw["vocab_size"] == 512 or args.with_tokenizer
    if tok:
        for name in TOKENIZER_FILES:
            shutil.copyfile(os.path.join(TOKENIZER_DIR, name), os.path.join(args.out, name))

    # Shards: one file below SHARD_BYTES, else greedy packing in parameter order (as save_pretrained).
    shards, cur, cur_bytes = [], [], 0
    for i, (name, shape) in enumerate(params):
        nb = math.prod(shape) * 2
        if cur and cur_bytes + nb > SHARD_BYTES:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((i, name, shape, nb))
        cur_bytes += nb
    shards.append(cur)
    single = len(shards) == 1
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = "model.safetensors" if single else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        entries, off = [], 0
        for i, name, shape, nb in shard:
            entries.append((name, shape, off, nb))
            off += nb
            weight_map[name] = fname
        path = os.path.join(args.out, fname)
        with open(path, "wb") as f:
            f.write(header_bytes(entries))
            for i, name, shape, nb in shard:
                std = 0.1 if len(shape) == 1 else 1.0 / math.sqrt(shape[-1])
                write_tensor(f, shape, std, args.seed, i)
        print(f"wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB, {len(shard)} tensors)", flush=True)
    if not single:
        index = {"metadata": {"total_size": total * 2}, "weight_map": weight_map}
        with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    print(f"{args.preset}: {total / 1e6:.1f}M parameters ({total * 2 / 1e9:.2f} GB bf16), "
          f"seed {args.seed}, tokenizer {'tests/fixtures/tokenizer' if tok else 'none'} -> {args.out}")


if __name__ == "__main__":
    main()
