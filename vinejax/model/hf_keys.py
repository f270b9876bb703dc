"""The explicit name/layout tables between Hugging Face tensors and the vinejax params pytree.

Each entry maps one of our leaves to a HF tensor name (a template with `{i}` for stacked decoder
layers) plus a layout kind saying how one layer's HF tensor becomes ours and back. Leaves that
name the same HF tensor are fused in it, concatenated along its first axis in table order
(Phi-3's qkv_proj and gate_up_proj). A family's table is `LAYER_KEYS` with its own entries:

* `copy`   : same array (norm weights, embeddings).
* `T`      : transpose (HF `nn.Linear` stores [out, in]; we store [in, out]).
* `in_heads`  : q/k/v projection, HF [n*Dh, D] -> ours [D, n, Dh].
* `out_heads` : o projection, HF [D, H*Dh] -> ours [H, Dh, D].
* `bias_heads`: q/k/v bias or OLMo 2's q/k norm, HF [n*Dh] -> ours [n, Dh].
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional

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

QK_NORMS = {  # one weight over head_dim (Qwen3, Gemma 3)
    "q_norm": ("self_attn.q_norm.weight", "copy"),
    "k_norm": ("self_attn.k_norm.weight", "copy"),
}
GEMMA_LAYER_KEYS = {  # norms before and after attention and MLP
    **LAYER_KEYS,
    "post_attn_norm": ("post_attention_layernorm.weight", "copy"),
    "mlp_norm": ("pre_feedforward_layernorm.weight", "copy"),
    "post_mlp_norm": ("post_feedforward_layernorm.weight", "copy"),
}
OLMO2_LAYER_KEYS = {  # norms after attention and MLP only; q/k norms over all heads
    **{k: v for k, v in LAYER_KEYS.items() if k not in ("attn_norm", "mlp_norm")},
    "post_attn_norm": ("post_attention_layernorm.weight", "copy"),
    "post_mlp_norm": ("post_feedforward_layernorm.weight", "copy"),
    "q_norm": ("self_attn.q_norm.weight", "bias_heads"),
    "k_norm": ("self_attn.k_norm.weight", "bias_heads"),
}
PHI3_LAYER_KEYS = {  # fused q/k/v and gate/up projections
    **LAYER_KEYS,
    "wq": ("self_attn.qkv_proj.weight", "in_heads"),
    "wk": ("self_attn.qkv_proj.weight", "in_heads"),
    "wv": ("self_attn.qkv_proj.weight", "in_heads"),
    "w_gate": ("mlp.gate_up_proj.weight", "T"),
    "w_up": ("mlp.gate_up_proj.weight", "T"),
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


class Part(NamedTuple):
    """One of our leaves inside a HF tensor: `rows` [start, stop) of its first axis (all of it
    unless fused), in layout `kind`, at decoder layer `layer` (None for top-level leaves); `rest`
    the tensor's other dims."""

    leaf: str
    layer: Optional[int]
    kind: str
    rows: tuple
    rest: tuple


def expected_hf_names(cfg: ModelConfig, layer_keys: dict, specs: dict) -> dict:
    """{HF name: [Part, ...]} for every leaf of `specs` (`llama.param_specs(cfg)`: layer leaves
    under "layers", top-level ones beside; leaves absent from the tables, e.g. the value head,
    are skipped), each layer leaf named through the family's `layer_keys`."""
    table: dict = {}

    def add(hf_name, leaf, layer, kind, shape):
        parts = table.setdefault(hf_name, [])
        start = parts[-1].rows[1] if parts else 0
        hf = hf_shape(kind, shape)
        parts.append(Part(leaf, layer, kind, (start, start + hf[0]), hf[1:]))

    for name in GLOBAL_KEYS:
        if name in specs:
            add(GLOBAL_KEYS[name][0], name, None, GLOBAL_KEYS[name][1], specs[name][0])
    layer_specs = specs["layers"]
    for name, (suffix, kind) in layer_keys.items():  # table order = order inside a fused tensor
        if name in layer_specs:
            for i in range(cfg.num_layers):
                add(LAYER_PREFIX.format(i=i) + suffix, name, i, kind, layer_specs[name][0][1:])
    return table


def full_hf_shape(parts: list) -> tuple:
    """The shape of the HF tensor holding `parts` (of shapes per `Part.kind`)."""
    return (parts[-1].rows[1],) + tuple(parts[-1].rest)
