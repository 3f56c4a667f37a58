#!/usr/bin/env python3
"""Build models/saes/registry.json from SAELens's pretrained_saes.yaml.

Usage:
    python make_registry.py [PATH/TO/pretrained_saes.yaml] [-o OUT.json] [--source "sae-lens X.Y.Z ..."]

Without a path, the yaml is looked up inside the installed `sae_lens` package
(found with importlib, *not* imported, so `pip install --no-deps sae-lens` is
enough) and the sae-lens version comes from the package metadata. Needs PyYAML.
Only the standard library and PyYAML are used; the output is deterministic.

What goes in
------------
Every release in the yaml except those that are not plain SAEs:
  * transcoders / cross-layer transcoders (conversion_func gemma_2_transcoder,
    mntss_clt_layer_transcoder, mwhanna_transcoder, or gemma_3 releases whose folders
    are transcoder*/clt*): they read one hook and write another, so there is no
    single hook at which to add a decoder row;
  * temporal SAEs (conversion_func temporal): context-dependent encoder with
    attention layers and their own checkpoint layout.
They are listed in EXCLUDED (printed by --list-excluded) and in README.md.
Releases of a model missing from MODELS stop the script (add its dimensions).

Fields (per release)
--------------------
release, repo_id, model, conversion_func, config_overrides: verbatim from the yaml.
family: "gemma-scope" (conversion_func gemma_2), "gemma-scope-2" (gemma_3), "other".
format / weights_file: how the files under `{repo_id}/{path}/` look (see FORMATS);
  weights_file null: `path` is itself the weights file (single-file pickles).
base_model_hf: the Hugging Face id of the model the SAE was trained on:
  * Gemma Scope: from repo_id `google/gemma-scope-{size}-{pt|it}-{site}` ->
    `google/gemma-2-{size}` (pt) / `google/gemma-2-{size}-it` (it). This is what
    SAELens's gemma_2 loader does too. It differs from the yaml `model` for
    gemma-scope-9b-it-res, whose yaml model says gemma-2-9b.
  * other Gemma releases: `model` if it already starts with "google/", else "google/" + model.
  * other models: MODELS maps the yaml `model` (a TransformerLens alias such as
    gpt2-small, or a Hub id) to the Hub id.
  * Gemma Scope 2: cross-checked against repo_id `google/gemma-scope-2-{size}-{pt|it}`
    -> `google/gemma-3-{size}-{pt|it}` (270m pt is plain `google/gemma-3-270m`).

Fields (per SAE)
----------------
id, path, neuronpedia: verbatim from the yaml (path as a string).
hook (TransformerLens name; a config_overrides.hook_name wins):
  * Gemma Scope: from the repo suffix, as SAELens's gemma_2 loader does:
      res -> blocks.L.hook_resid_post (the `embedding/...` folders -> hook_embed),
      mlp -> blocks.L.hook_mlp_out, att -> blocks.L.attn.hook_z.
  * Gemma Scope 2: from the first folder of the path, as SAELens's gemma_3 loader does:
      resid_post[_all] -> blocks.L.hook_resid_post,
      mlp_out[_all]    -> blocks.L.hook_mlp_out,
      attn_out[_all]   -> blocks.L.attn.hook_z   (NOT hook_attn_out: the SAE reads
                          o_proj's input, hf hook `model.layers.L.self_attn.o_proj.input`).
  * other releases: the id is (or starts with, before "__") the hook name,
      e.g. `blocks.12.hook_resid_post__trainer_0` -> blocks.12.hook_resid_post;
      a trailing `_N` is the width (gpt2-small-res-jb-feature-splitting:
      `blocks.8.hook_resid_pre_768`); `blocks.L.hook_z` is TransformerLens's
      `blocks.L.attn.hook_z` (connor_rob_hook_z: the cfg's act_name);
      the loaders that name SAEs otherwise get their hook as SAELens's loader does:
      llama_scope `lLr_8x`/`lLa_..`/`lLm_..` -> blocks.L.hook_resid_post/hook_attn_out/hook_mlp_out
      (the folder's L{L}R/A/M; SAELens reads hyperparams.json's hook_point_in),
      llama_scope_r1_distill `.../L{L}R` -> blocks.L.hook_resid_post,
      qwen_scope `layerL` -> blocks.L.hook_resid_post, goodfire `layer_L` ->
      blocks.L.hook_resid_post, dictionary_learning `resid_post_layer_L_...` ->
      blocks.L.hook_resid_post.
layer: L from the hook (null for hook_embed). site: the hook without `blocks.L.`.
d_sae (a config_overrides.d_sae wins): the width token in the id/path,
  k = 1024 (4k=4096, 16k=16384, 32k, 65k=65536, 131k, 262k, 524k, 1m=1048576);
  sae_bench releases: `width-2powN` in the release name -> 2**N;
  jb releases: the trailing `_NNNNN` of the folder name; chanind matryoshka: `w-32k`;
  feature splitting: the id's `_N`; llama_scope: d_model x the repo's `-8x`/`-32x`;
  qwen_scope: the repo's `-W32K-` (k = 1024); goodfire / deepseek_r1: as SAELens's
  loader hard-codes them (65536). Otherwise null: the SAE's own cfg.json says it.
d_in (a config_overrides.d_in wins): the model's d_model, except attn.hook_z SAEs,
  which get n_heads * d_head (MODEL_DIMS, checked against TransformerLens 2.18's
  hard-coded configs; MODELS for other families, from the models' config.json).
l0: the yaml `l0` as a float; if absent, N from an `average_l0_N` folder; else null.
norm_scaling_factor: only emitted when the yaml has it (SAELens folds it into the
  weights when cfg normalize_activations == expected_average_only_in:
  W_enc *= f, W_dec /= f, b_dec /= f).
config_overrides (per release, verbatim): SAELens applies them over the SAE's cfg
  (`cfg_dict.update(cfg_overrides)`); the loader must too. The ones in 6.54.12:
  normalize_activations (mistral-7b-res-wg: constant_norm_rescale), dataset_path,
  model_from_pretrained_kwargs.center_writing_weights (jbloom/tommmcgrath GPT-2).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import sys

import yaml

# d_model, n_heads, d_head (TransformerLens 2.18.0 loading_from_pretrained.py,
# identical to the Hugging Face configs).
MODEL_DIMS = {
    "gemma-2b": (2048, 8, 256),
    "gemma-7b": (3072, 16, 256),
    "gemma-2-2b": (2304, 8, 256),
    "gemma-2-9b": (3584, 16, 256),
    "gemma-2-27b": (4608, 32, 128),
    "gemma-3-270m": (640, 4, 256),
    "gemma-3-1b": (1152, 4, 256),
    "gemma-3-4b": (2560, 8, 256),
    "gemma-3-12b": (3840, 16, 256),
    "gemma-3-27b": (5376, 32, 128),
}

# Non-Gemma models: yaml `model` -> (Hub id, d_model, n_heads, d_head). From each model's
# config.json (hidden_size, num_attention_heads, head_dim or hidden_size/heads); TransformerLens
# aliases (gpt2-small, mistral-7b, pythia-70m-deduped) as TransformerLens 2.18 maps them.
# n_heads/d_head None: no attn.hook_z SAE is listed for that model.
MODELS = {
    "gpt2-small": ("openai-community/gpt2", 768, 12, 64),
    "pythia-70m-deduped": ("EleutherAI/pythia-70m-deduped", 512, 8, 64),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", 4096, 32, 128),
    "meta-llama/Llama-3.1-8B": ("meta-llama/Llama-3.1-8B", 4096, 32, 128),
    "meta-llama/Llama-3.1-8B-Instruct": ("meta-llama/Llama-3.1-8B-Instruct", 4096, 32, 128),
    "meta-llama/Meta-Llama-3-8B-Instruct": ("meta-llama/Meta-Llama-3-8B-Instruct", 4096, 32, 128),
    "meta-llama/Llama-3.3-70B-Instruct": ("meta-llama/Llama-3.3-70B-Instruct", 8192, 64, 128),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", 4096, 32, 128),
    "Qwen/Qwen2.5-7B-Instruct": ("Qwen/Qwen2.5-7B-Instruct", 3584, 28, 128),
    "openai/gpt-oss-20b": ("openai/gpt-oss-20b", 2880, 64, 64),
    # Qwen Scope: d_in as SAELens's QWEN_SCOPE_MODEL_INFO gives it.
    "Qwen/Qwen3-1.7B-Base": ("Qwen/Qwen3-1.7B-Base", 2048, None, None),
    "Qwen/Qwen3-8B-Base": ("Qwen/Qwen3-8B-Base", 4096, None, None),
    "Qwen/Qwen3-30B-A3B-Base": ("Qwen/Qwen3-30B-A3B-Base", 2048, None, None),
    "Qwen/Qwen3.5-2B-Base": ("Qwen/Qwen3.5-2B-Base", 2048, None, None),
    "Qwen/Qwen3.5-9B-Base": ("Qwen/Qwen3.5-9B-Base", 4096, None, None),
    "Qwen/Qwen3.5-27B": ("Qwen/Qwen3.5-27B", 5120, None, None),
    "Qwen/Qwen3.5-35B-A3B-Base": ("Qwen/Qwen3.5-35B-A3B-Base", 2048, None, None),
}

WIDTHS = {
    "4k": 4096,
    "16k": 16384,
    "32k": 32768,
    "65k": 65536,
    "131k": 131072,
    "262k": 262144,
    "524k": 524288,
    "1m": 1048576,
}

# conversion_func -> (format, weights file name inside {path}/)
FORMATS = {
    "gemma_2": ("gemma_scope_npz", "params.npz"),
    "gemma_3": ("gemma_scope_2_safetensors", "params.safetensors"),
    None: ("saelens", "sae_weights.safetensors"),
    "dictionary_learning_1": ("dictionary_learning", "ae.pt"),
    # Llama Scope: {path}/hyperparams.json + {path}/checkpoints/final.safetensors.
    "llama_scope": ("llama_scope", "checkpoints/final.safetensors"),
    # Llama Scope R1 distill: {path}/config.json + {path}/final.safetensors.
    "llama_scope_r1_distill": ("llama_scope_r1", "final.safetensors"),
    # One PyTorch pickle per SAE, `path` being the file.
    "goodfire": ("torch_pickle", None),
    "deepseek_r1": ("torch_pickle", None),
    "qwen_scope": ("torch_pickle", None),
    "connor_rob_hook_z": ("torch_pickle", None),
}
EXCLUDED_CONVERSIONS = {
    "gemma_2_transcoder": "transcoder (reads blocks.L.ln2.hook_normalized, writes blocks.L.hook_mlp_out)",
    "mntss_clt_layer_transcoder": "cross-layer transcoder (CLT)",
    "temporal": "temporal SAE (attention layers in the encoder, own checkpoint layout)",
    "mwhanna_transcoder": "transcoder (reads blocks.L.mlp.hook_in, writes blocks.L.hook_mlp_out)",
}

GS2_SITES = {
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
    "attn_out": "attn.hook_z",
}
GS1_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}
KNOWN_SITES = {
    "hook_embed",
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_z",
}


def find_yaml() -> tuple[str, str]:
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("sae_lens is not installed; pass the path to pretrained_saes.yaml")
    path = os.path.join(list(spec.submodule_search_locations)[0], "pretrained_saes.yaml")
    version = importlib.metadata.version("sae-lens")
    return path, f"sae-lens {version} pretrained_saes.yaml"


def is_gemma(model: str) -> bool:
    name = str(model)
    if name.startswith("google/"):
        name = name[len("google/") :]
    return name.startswith("gemma")


def size_key(model_hf: str) -> str:
    """google/gemma-2-9b-it -> gemma-2-9b; google/gemma-3-270m -> gemma-3-270m."""
    name = model_hf.split("/")[-1]
    m = re.match(r"(gemma(?:-\d)?-\d+[mb])", name)
    if not m or m.group(1) not in MODEL_DIMS:
        raise ValueError(f"no dimensions known for model {model_hf!r}")
    return m.group(1)


def base_model_hf(release: str, info: dict) -> str:
    model = str(info["model"])
    if not is_gemma(model):
        if model not in MODELS:
            raise ValueError(f"{release}: no Hub id / dimensions known for model {model!r}; add it to MODELS")
        return MODELS[model][0]
    from_model = model if model.startswith("google/") else "google/" + model
    repo = info["repo_id"]
    m = re.fullmatch(r"google/gemma-scope-(\d+b)-(pt|it)-\w+", repo)
    if m and info.get("conversion_func") == "gemma_2":
        size, kind = m.groups()
        derived = f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
        if derived != from_model:
            print(
                f"note: {release}: yaml model {model!r} but repo {repo} is {derived}; using {derived}",
                file=sys.stderr,
            )
        return derived
    m = re.fullmatch(r"google/gemma-scope-2-(\d+[mb])-(pt|it)", repo)
    if m:
        size, kind = m.groups()
        derived = f"google/gemma-3-{size}-{kind}"
        if size == "270m" and kind == "pt":
            derived = "google/gemma-3-270m"
        if derived != from_model:
            raise ValueError(f"{release}: yaml model {model!r} disagrees with repo {repo}")
    return from_model


def model_dims(release: str, info: dict, base: str) -> tuple[int, int | None, int | None]:
    """-> (d_model, n_heads, d_head) of the release's model."""
    model = str(info["model"])
    if is_gemma(model):
        return MODEL_DIMS[size_key(base)]
    return MODELS[model][1:]


def width_from(text: str) -> int | None:
    m = re.search(r"width_(\d+[km])(?:\b|_|/|$)", text)
    return WIDTHS[m.group(1)] if m else None


def classify(release: str, info: dict) -> tuple[str | None, str | None]:
    """-> (family, exclusion reason or None)."""
    conv = info.get("conversion_func")
    if conv in EXCLUDED_CONVERSIONS:
        return None, EXCLUDED_CONVERSIONS[conv]
    if conv == "gemma_3":
        tops = {str(s["path"]).split("/")[0] for s in info["saes"]}
        if any(t.startswith(("transcoder", "clt")) for t in tops):
            return None, "Gemma Scope 2 transcoder (reads blocks.L.hook_mlp_in, writes blocks.L.hook_mlp_out)"
        return "gemma-scope-2", None
    if conv not in FORMATS:
        raise ValueError(f"{release}: unknown conversion_func {conv!r}; extend FORMATS or EXCLUDED_CONVERSIONS")
    return ("gemma-scope" if conv == "gemma_2" else "other"), None


def layer_of(path: str) -> int:
    m = re.search(r"layer_(\d+)", path)
    if not m:
        raise ValueError(f"no layer_N in {path!r}")
    return int(m.group(1))


LLAMA_SCOPE_SITES = {"R": "hook_resid_post", "A": "hook_attn_out", "M": "hook_mlp_out"}


def derive_hook(release: str, info: dict, family: str, sae: dict) -> str:
    sid, path = sae["id"], str(sae["path"])
    conv = info.get("conversion_func")
    if family == "gemma-scope":
        site = GS1_SITES[info["repo_id"].rsplit("-", 1)[-1]]
        if path.startswith("embedding/"):
            if site != "hook_resid_post":
                raise ValueError(f"{release}/{sid}: embedding SAE outside a res repo")
            return "hook_embed"
        return f"blocks.{layer_of(path)}.{site}"
    if family == "gemma-scope-2":
        top = path.split("/")[0]
        top = top[: -len("_all")] if top.endswith("_all") else top
        if top not in GS2_SITES:
            raise ValueError(f"{release}/{sid}: unknown Gemma Scope 2 folder {top!r}")
        return f"blocks.{layer_of(path)}.{GS2_SITES[top]}"
    if conv in ("llama_scope", "llama_scope_r1_distill"):
        m = re.search(r"L(\d+)([RAM])(?:-|$)", path)
        if not m:
            raise ValueError(f"{release}/{sid}: no L<layer><R|A|M> in the Llama Scope folder {path!r}")
        return f"blocks.{m.group(1)}.{LLAMA_SCOPE_SITES[m.group(2)]}"
    if conv == "qwen_scope":
        m = re.fullmatch(r"layer(\d+)\.sae\.pt", path)
        if not m:
            raise ValueError(f"{release}/{sid}: no layerN.sae.pt in {path!r}")
        return f"blocks.{m.group(1)}.hook_resid_post"
    if conv == "goodfire" or re.match(r"resid_post_layer_\d+", sid):
        return f"blocks.{layer_of(sid)}.hook_resid_post"
    m = re.match(r"(blocks\.\d+\.[\w.]+?)(?:_\d+)?(?:__|$)", sid)
    if not m:
        raise ValueError(f"{release}/{sid}: cannot derive a hook from the id")
    hook = m.group(1)
    # connor_rob_hook_z ids say blocks.L.hook_z for TransformerLens's blocks.L.attn.hook_z.
    return re.sub(r"^(blocks\.\d+)\.hook_z$", r"\1.attn.hook_z", hook)


def derive_d_sae(release: str, info: dict, sae: dict, d_model: int) -> int | None:
    sid, path = sae["id"], str(sae["path"])
    conv = info.get("conversion_func")
    repo = info["repo_id"]
    if conv == "llama_scope":
        m = re.search(r"-(\d+)x$", repo)
        return d_model * int(m.group(1))
    if conv == "qwen_scope":
        m = re.search(r"-W(\d+)K-", repo)
        return int(m.group(1)) * 1024
    if conv in ("goodfire", "deepseek_r1"):
        return 65536  # SAELens's get_goodfire_config_from_hf / get_deepseek_r1_config_from_hf
    w = width_from(sid) or width_from(path)
    if w:
        return w
    m = re.search(r"width-2pow(\d+)", release)
    if m:
        return 2 ** int(m.group(1))
    m = re.search(r"_(\d{4,})(?:_|$)", path)  # jbloom: ..._hook_resid_post_16384[_anthropic]
    if m:
        return int(m.group(1))
    m = re.search(r"-w-(\d+[km])-", repo)  # chanind matryoshka: ...-w-32k-l0-40
    if m:
        return WIDTHS[m.group(1)]
    m = re.fullmatch(r"blocks\.\d+\.hook_\w+?_(\d+)", sid)  # feature splitting: ..._768
    if m:
        return int(m.group(1))
    return None


def build(data: dict) -> tuple[list, list]:
    releases, excluded = [], []
    for release in sorted(data):
        info = data[release]
        family, reason = classify(release, info)
        if reason:
            excluded.append({"release": release, "repo_id": info["repo_id"], "saes": len(info["saes"]), "reason": reason})
            continue
        conv = info.get("conversion_func")
        fmt, weights = FORMATS[conv]
        base = base_model_hf(release, info)
        d_model, n_heads, d_head = model_dims(release, info, base)
        overrides = info.get("config_overrides") or {}
        saes = []
        for sae in info["saes"]:
            hook = overrides.get("hook_name") or derive_hook(release, info, family, sae)
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook)
            layer, site = (int(m.group(1)), m.group(2)) if m else (None, hook)
            if site not in KNOWN_SITES:
                raise ValueError(f"{release}/{sae['id']}: unexpected hook {hook!r}")
            if site == "attn.hook_z" and n_heads is None:
                raise ValueError(f"{release}/{sae['id']}: attn.hook_z SAE but no head dims in MODELS")
            d_in = overrides.get("d_in") or (n_heads * d_head if site == "attn.hook_z" else d_model)
            d_sae = overrides.get("d_sae") or derive_d_sae(release, info, sae, d_model)
            if d_sae is None and family != "other":
                raise ValueError(f"{release}/{sae['id']}: cannot derive d_sae")
            l0 = sae.get("l0")
            if l0 is None:
                m = re.search(r"average_l0_(\d+)$", str(sae["path"]))
                l0 = int(m.group(1)) if m else None
            entry = {
                "id": sae["id"],
                "path": str(sae["path"]),
                "hook": hook,
                "layer": layer,
                "site": site,
                "d_in": d_in,
                "d_sae": d_sae,
                "neuronpedia": sae.get("neuronpedia"),
                "l0": None if l0 is None else float(l0),
            }
            if sae.get("norm_scaling_factor") is not None:
                entry["norm_scaling_factor"] = float(sae["norm_scaling_factor"])
            saes.append(entry)
        ids = [s["id"] for s in saes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{release}: duplicate sae ids")
        saes.sort(key=lambda s: (-1 if s["layer"] is None else s["layer"], s["d_sae"] or 0, natural(s["id"])))
        releases.append(
            {
                "release": release,
                "family": family,
                "repo_id": info["repo_id"],
                "model": str(info["model"]),
                "base_model_hf": base,
                "conversion_func": conv,
                "format": fmt,
                "weights_file": weights,
                "config_overrides": info.get("config_overrides"),
                "saes": saes,
            }
        )
    return releases, excluded


def natural(s: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]


def self_check(releases: list) -> None:
    by = {r["release"]: r for r in releases}
    canon = {s["id"]: s for s in by["gemma-scope-2b-pt-res-canonical"]["saes"]}
    s = canon["layer_20/width_16k/canonical"]
    assert s["path"] == "layer_20/width_16k/average_l0_71", s
    assert (s["hook"], s["d_in"], s["d_sae"]) == ("blocks.20.hook_resid_post", 2304, 16384), s
    att = by["gemma-scope-2b-pt-att-canonical"]["saes"][0]
    assert att["site"] == "attn.hook_z" and att["d_in"] == 2048, att
    assert by["gemma-scope-9b-it-res"]["base_model_hf"] == "google/gemma-2-9b-it"
    jb = {s["id"]: s for s in by["gpt2-small-res-jb"]["saes"]}
    assert jb["blocks.8.hook_resid_pre"]["hook"] == "blocks.8.hook_resid_pre" and jb["blocks.8.hook_resid_pre"]["d_in"] == 768
    assert by["gpt2-small-res-jb"]["base_model_hf"] == "openai-community/gpt2"
    fs = {s["id"]: s for s in by["gpt2-small-res-jb-feature-splitting"]["saes"]}
    assert (fs["blocks.8.hook_resid_pre_768"]["hook"], fs["blocks.8.hook_resid_pre_768"]["d_sae"]) == ("blocks.8.hook_resid_pre", 768)
    kk = by["gpt2-small-hook-z-kk"]["saes"][0]
    assert (kk["hook"], kk["d_in"]) == ("blocks.0.attn.hook_z", 768), kk
    ls = {s["id"]: s for s in by["llama_scope_lxa_8x"]["saes"]}
    assert (ls["l3a_8x"]["hook"], ls["l3a_8x"]["d_sae"]) == ("blocks.3.hook_attn_out", 32768), ls["l3a_8x"]
    assert by["mistral-7b-res-wg"]["config_overrides"] == {"normalize_activations": "constant_norm_rescale"}
    qs = by["qwen-scope-3-8b-base-w64k-l50"]["saes"][5]
    assert (qs["hook"], qs["d_in"], qs["d_sae"]) == ("blocks.5.hook_resid_post", 4096, 65536), qs


def dump(doc: dict) -> str:
    """Compact JSON, one SAE per line (diff-friendly, ~1 byte/SAE of overhead)."""
    enc = lambda o: json.dumps(o, separators=(",", ":"), ensure_ascii=True)  # noqa: E731
    out = ['{"source":' + enc(doc["source"]) + ',"releases":[']
    for i, r in enumerate(doc["releases"]):
        head = {k: v for k, v in r.items() if k != "saes"}
        out.append(enc(head)[:-1] + ',"saes":[')
        out.append(",\n".join(enc(s) for s in r["saes"]))
        out.append("]}" + ("," if i + 1 < len(doc["releases"]) else ""))
    out.append("]}")
    return "\n".join(out) + "\n"


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("yaml", nargs="?", help="pretrained_saes.yaml (default: from the installed sae_lens)")
    ap.add_argument("-o", "--out", default=os.path.join(here, "registry.json"))
    ap.add_argument("--source", help='provenance string, e.g. "sae-lens 6.54.12 pretrained_saes.yaml"')
    ap.add_argument("--list-excluded", action="store_true")
    args = ap.parse_args()
    if args.yaml:
        path, source = args.yaml, args.source
        if not source:
            sys.exit("--source is required with an explicit yaml path (e.g. 'sae-lens 6.54.12 pretrained_saes.yaml')")
    else:
        path, source = find_yaml()
        source = args.source or source
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    releases, excluded = build(data)
    self_check(releases)
    text = dump({"source": source, "releases": releases})
    assert json.loads(text)["releases"] == json.loads(json.dumps(releases))
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    n = sum(len(r["saes"]) for r in releases)
    print(f"wrote {args.out}: {len(releases)} releases, {n} SAEs, {len(text.encode())} bytes", file=sys.stderr)
    if args.list_excluded:
        for e in excluded:
            print(f"excluded {e['release']} ({e['saes']} entries): {e['reason']}", file=sys.stderr)


if __name__ == "__main__":
    main()
