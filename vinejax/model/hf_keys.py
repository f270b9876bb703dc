"""The explicit name/layout table between Hugging Face tensors and the vinejax params pytree.

Each entry maps one of our leaves to a HF tensor name (a template with `{i}` for stacked decoder
layers) plus a layout kind saying how one layer's HF tensor becomes ours and back:

* `copy`   : same array (norm weights, embeddings).
* `T`      : transpose (HF `nn.Linear` stores [out, in]; we store [in, out]).
* `in_heads`  : q/k/v projection, HF [n*Dh, D] -> ours [D, n, Dh].
* `out_heads` : o projection, HF [D, H*Dh] -> ours [H, Dh, D].
* `bias_heads`: q/k/v bias, HF [n*Dh] -> ours [n, Dh].
"""
from __future__ import annotations

import re

import numpy as np

from vinejax.model.config import ModelConfig

LAYER_PREFIX = "model.layers.{i}."

# our layer leaf -> (HF suffix under model.layers.{i}., kind)
LAYER_KEYS = {
    "attn_norm": ("input_layernorm.weight", "copy"),
    "wq": ("self_attn.q_proj.weight", "in_heads"),
    "wk": ("self_attn.k_proj.weight", "in_heads"),
    "wv": ("self_attn.v_proj.weight", "in_heads"),
    "wo": ("self_attn.o_proj.weight", "out_heads"),
    "mlp_norm": ("post_attention_layernorm.weight", "copy"),
    "w_gate": ("mlp.gate_proj.weight", "T"),
    "w_up": ("mlp.up_proj.weight", "T"),
    "w_down": ("mlp.down_proj.weight", "T"),
    "bq": ("self_attn.q_proj.bias", "bias_heads"),
    "bk": ("self_attn.k_proj.bias", "bias_heads"),
    "bv": ("self_attn.v_proj.bias", "bias_heads"),
}

# our top-level leaf -> (HF name, kind)
GLOBAL_KEYS = {
    "embed": ("model.embed_tokens.weight", "copy"),
    "final_norm": ("model.norm.weight", "copy"),
    "lm_head": ("lm_head.weight", "T"),
}

# HF tensors that carry no parameters (non-persistent buffers some old checkpoints saved).
IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def hf_shape(kind: str, ours: tuple) -> tuple:
    """The HF shape of one (per-layer) tensor whose vinejax shape is `ours`."""
    if kind == "copy":
        return tuple(ours)
    if kind == "T":
        return tuple(reversed(ours))
    if kind == "in_heads":
        d, n, dh = ours
        return (n * dh, d)
    if kind == "out_heads":
        h, dh, d = ours
        return (d, h * dh)
    if kind == "bias_heads":
        n, dh = ours
        return (n * dh,)
    raise ValueError(f"unknown layout kind {kind!r}")


def to_ours(kind: str, a: np.ndarray, ours: tuple) -> np.ndarray:
    """Convert one HF tensor to our layout of shape `ours`."""
    if kind == "copy":
        return a
    if kind == "T":
        return a.T
    if kind == "in_heads":
        return a.T.reshape(ours)
    if kind == "out_heads":
        return a.T.reshape(ours)
    if kind == "bias_heads":
        return a.reshape(ours)
    raise ValueError(f"unknown layout kind {kind!r}")


def to_hf(kind: str, a: np.ndarray) -> np.ndarray:
    """Convert one of our (per-layer) arrays to the contiguous HF layout."""
    if kind == "copy":
        out = a
    elif kind == "T":
        out = a.T
    elif kind == "in_heads":
        out = a.reshape(a.shape[0], -1).T
    elif kind == "out_heads":
        out = a.reshape(-1, a.shape[-1]).T
    elif kind == "bias_heads":
        out = a.reshape(-1)
    else:
        raise ValueError(f"unknown layout kind {kind!r}")
    return np.ascontiguousarray(out)


def expected_hf_names(cfg: ModelConfig, layer_leaves, global_leaves) -> dict:
    """{HF name: (our leaf path, layer index or None, kind)} for the given leaves of `cfg`."""
    table = {}
    for name in global_leaves:
        hf_name, kind = GLOBAL_KEYS[name]
        table[hf_name] = (name, None, kind)
    for name in layer_leaves:
        suffix, kind = LAYER_KEYS[name]
        for i in range(cfg.num_layers):
            table[LAYER_PREFIX.format(i=i) + suffix] = (name, i, kind)
    return table
