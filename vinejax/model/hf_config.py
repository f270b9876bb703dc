"""Translate between Hugging Face `config.json` dicts and `ModelConfig`.

Both config layouts are accepted: transformers >= 5 writes `rope_parameters` (holding
`rope_theta`, `rope_type` and any scaling factors) and `dtype`; older folders write top-level
`rope_theta`, `rope_scaling` and `torch_dtype`.

Sliding-window attention (Mistral, Qwen2 with `use_sliding_window`) is not implemented. Full
causal attention is identical to sliding-window attention for sequences no longer than the
window, so `config_from_hf` warns and clamps `max_position_embeddings` to the window: sequences
within that limit are computed exactly. `config_to_hf` writes such configs back with
`sliding_window: null`, which describes exactly what vinejax computes.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

from vinejax.model.config import SUPPORTED_MODEL_TYPES, ModelConfig

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}

_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "float64": "float32"}


def _normalise_dtype(name: Any) -> Optional[str]:
    """'torch.bfloat16' / 'bfloat16' / None → a jnp dtype name (or None)."""
    if name is None or name == "auto":
        return None
    name = str(name).replace("torch.", "")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported checkpoint dtype {name!r}; supported: {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[name]


def _rope(hf: dict) -> tuple[float, Optional[dict]]:
    """(rope_theta, rope_scaling dict or None) from either config layout."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in params and "full_attention" in params:
        params = params["full_attention"]  # per-layer-type layout; all layers are full attention here
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(hf.get("rope_theta", 10000.0))
        scaling = dict(hf.get("rope_scaling") or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") in (None, "default"):
        return theta, None
    if scaling["rope_type"] not in ("linear", "llama3"):
        raise ValueError(f"unsupported rope_type {scaling['rope_type']!r}; supported: default, linear, llama3")
    return theta, scaling


def _token_id(value: Any):
    """A token id from config.json: int, None, or a list (kept as a hashable tuple)."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 else tuple(value)
    return value


def _sliding_window(hf: dict, model_type: str) -> Optional[int]:
    window = hf.get("sliding_window")
    if model_type == "qwen2" and not hf.get("use_sliding_window", False):
        return None
    if model_type == "llama":
        return None
    return int(window) if window else None


def config_from_hf(hf: dict, dtype: Optional[str] = None, param_dtype: Optional[str] = None, **overrides) -> ModelConfig:
    """A `ModelConfig` from a Hugging Face config dict (the parsed `config.json`).

    `param_dtype` defaults to the checkpoint's `dtype` / `torch_dtype` (float32 when absent) and
    `dtype` (compute) defaults to `param_dtype`. `overrides` are passed to `ModelConfig` (e.g.
    `remat=True`, `value_head=True`). Raises ValueError for an unsupported `model_type`, a
    non-SiLU activation, MLP biases, or Llama `attention_bias` (which would need an o_proj bias).
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"unsupported hidden_act {act!r}; only silu is implemented")
    if hf.get("mlp_bias", False):
        raise ValueError("mlp_bias=True is not supported")
    if model_type == "qwen2":
        attention_bias = True
    else:
        if hf.get("attention_bias", False):
            raise ValueError(f"attention_bias=True is not supported for model_type {model_type!r}")
        attention_bias = False
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    head_dim = hf.get("head_dim") or hidden // heads
    theta, scaling = _rope(hf)
    max_pos = int(hf.get("max_position_embeddings", 2048))
    window = _sliding_window(hf, model_type)
    if window is not None and window < max_pos:
        warnings.warn(
            f"{model_type} config has sliding_window={window}, which vinejax does not implement; "
            f"using full attention and clamping max_position_embeddings {max_pos} -> {window} "
            "(exact for sequences up to that length)",
            stacklevel=2,
        )
        max_pos = window
    ckpt_dtype = _normalise_dtype(hf.get("dtype", hf.get("torch_dtype"))) or "float32"
    param_dtype = param_dtype or ckpt_dtype
    kwargs = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=max_pos,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        model_type=model_type,
        bos_token_id=_token_id(hf.get("bos_token_id")),
        eos_token_id=_token_id(hf.get("eos_token_id")),
        pad_token_id=_token_id(hf.get("pad_token_id")),
        dtype=dtype or param_dtype,
        param_dtype=param_dtype,
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def _as_json_id(value):
    return list(value) if isinstance(value, tuple) else value


def config_to_hf(cfg: ModelConfig, dtype: Optional[str] = None) -> dict:
    """A transformers-loadable config dict for `cfg` (transformers-5 `rope_parameters` layout).

    `dtype` is the storage dtype written to `dtype` (default `cfg.param_dtype`). Older
    transformers also read the duplicated top-level `rope_theta` / `rope_scaling` keys.
    """
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    rope.update(cfg.rope_scaling_dict)
    hf = {
        "architectures": [ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling_dict or None,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": _as_json_id(cfg.bos_token_id),
        "eos_token_id": _as_json_id(cfg.eos_token_id),
        "pad_token_id": _as_json_id(cfg.pad_token_id),
        "dtype": dtype or cfg.param_dtype,
        "torch_dtype": dtype or cfg.param_dtype,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if cfg.model_type == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    else:
        hf.update(sliding_window=None, use_sliding_window=False)
    return hf
