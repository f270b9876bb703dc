"""Translate between Hugging Face `config.json` dicts and `ModelConfig`, one family at a time.

A family (`FAMILIES`, keyed by HF `model_type`) is its transformers class, its tensor name table
(`hf_keys`), the values its config.json may leave out (transformers' class defaults), and two
small functions: `read` turns its config keys into `ModelConfig` switches, `write` turns the
switches back into its keys. Everything shared (sizes, RoPE, token ids, dtypes) is read and
written once, here.

Both config layouts are accepted: transformers >= 5 writes `rope_parameters` (holding
`rope_theta`, `rope_type` and any scaling factors; per layer type for Gemma 3) and `dtype`;
older folders write top-level `rope_theta`, `rope_scaling` (`rope_local_base_freq`) and
`torch_dtype`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from vinejax.model import hf_keys
from vinejax.model.config import FULL, SLIDING, ModelConfig, UnsupportedModelError, unsupported_model_type

_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "float64": "float32"}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_HF_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}


@dataclasses.dataclass(frozen=True)
class Family:
    """One HF model family: `architecture` (the transformers class `config_to_hf` names),
    `layer_keys` (its `hf_keys` table), `defaults` (transformers' values of keys its config.json
    may omit), `read(hf) -> {ModelConfig switch: value}`, `write(cfg) -> {HF key: value}`."""

    architecture: str
    layer_keys: dict
    read: Callable[[dict], dict]
    write: Callable[[ModelConfig], dict]
    defaults: dict = dataclasses.field(default_factory=dict)


def _normalise_dtype(name: Any) -> Optional[str]:
    """'torch.bfloat16' / 'bfloat16' / None → a jnp dtype name (or None)."""
    if name is None or name == "auto":
        return None
    name = str(name).replace("torch.", "")
    if name not in _DTYPE_NAMES:
        raise UnsupportedModelError(f"unsupported checkpoint dtype {name!r}; supported: {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[name]


def _rope_params(hf: dict, layer_type: str = FULL) -> dict:
    """The RoPE dict of `layer_type` layers (rope_theta, rope_type, scaling keys) from either layout."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in params and layer_type in params:
        return dict(params[layer_type] or {})  # per-layer-type layout (Gemma 3)
    if isinstance(params, dict) and layer_type == FULL:
        return dict(params)
    if layer_type == FULL:
        return {"rope_theta": hf.get("rope_theta"), **(hf.get("rope_scaling") or {})}
    return {}


def _rope(hf: dict) -> tuple[float, Optional[dict]]:
    """(rope_theta, rope_scaling dict or None) of the global (full-attention) RoPE."""
    scaling = _rope_params(hf)
    theta = float(scaling.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0)
    scaling.pop("partial_rotary_factor", None)  # a RoPE width, read by the Phi-3 family
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") in (None, "default"):
        return theta, None
    if scaling["rope_type"] not in ("linear", "llama3"):
        raise UnsupportedModelError(
            f"unsupported rope_type {scaling['rope_type']!r}; supported: default, linear, llama3")
    return theta, scaling


def _token_id(value: Any):
    """A token id from config.json: int, None, or a list (kept as a hashable tuple)."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 else tuple(value)
    return value


def _activation(hf: dict, key: str = "hidden_act") -> str:
    act = hf.get(key, "silu")
    if act not in _ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported {key} {act!r}; supported: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[act]


def _no_bias(hf: dict) -> None:
    """Families without projection biases (an o_proj bias would be needed)."""
    if hf.get("attention_bias", False):
        raise UnsupportedModelError(f"attention_bias=True is not supported for model_type {hf['model_type']!r}")


def _windows(hf: dict, default_types: Callable[[int], list]) -> dict:
    """sliding_window and layer_types (config.json's, else `default_types(num_layers)`)."""
    window = hf.get("sliding_window")
    if not window:
        return {}
    types = hf.get("layer_types") or default_types(int(hf["num_hidden_layers"]))
    return {"sliding_window": int(window), "layer_types": tuple(types)}


def _every_layer(n: int) -> list:
    return [SLIDING] * n


def _write_windows(cfg: ModelConfig) -> dict:
    return {"sliding_window": cfg.sliding_window, "layer_types": list(cfg.layer_types or (FULL,) * cfg.num_layers)}


# ----------------------------------------------------------------------------- the families


def _read_llama(hf: dict) -> dict:
    _no_bias(hf)
    return {"hidden_act": _activation(hf)}


def _write_llama(cfg: ModelConfig) -> dict:
    return {"hidden_act": _HF_ACTIVATIONS[cfg.hidden_act], "attention_bias": False, "mlp_bias": False}


def _read_mistral(hf: dict) -> dict:
    return {"hidden_act": _activation(hf), **_windows(hf, _every_layer)}


def _write_mistral(cfg: ModelConfig) -> dict:
    return {"hidden_act": _HF_ACTIVATIONS[cfg.hidden_act], "sliding_window": cfg.sliding_window}


def _qwen_windows(hf: dict) -> dict:
    """Qwen2/3: windows only with use_sliding_window, on layers >= max_window_layers by default."""
    if not hf.get("use_sliding_window", False):
        return {}
    first = int(hf.get("max_window_layers", 28))
    return _windows(hf, lambda n: [SLIDING if i >= first else FULL for i in range(n)])


def _write_qwen_windows(cfg: ModelConfig) -> dict:
    return {"use_sliding_window": cfg.sliding_window is not None, "max_window_layers": 0, **_write_windows(cfg)}


def _read_qwen2(hf: dict) -> dict:
    return {"hidden_act": _activation(hf), "attention_bias": True, **_qwen_windows(hf)}


def _write_qwen2(cfg: ModelConfig) -> dict:
    return {"hidden_act": _HF_ACTIVATIONS[cfg.hidden_act], **_write_qwen_windows(cfg)}


def _read_qwen3(hf: dict) -> dict:
    _no_bias(hf)
    return {"hidden_act": _activation(hf), "qk_norm": "head", **_qwen_windows(hf)}


def _write_qwen3(cfg: ModelConfig) -> dict:
    return {**_write_qwen2(cfg), "attention_bias": False}


def _read_gemma(hf: dict, default_types: Callable[[int], list]) -> dict:
    """What Gemma 2 and 3 share: (1 + w) norms before and after each sublayer, √D embeddings,
    GeGLU, query_pre_attn_scalar, interleaved sliding layers, a final-logit soft cap."""
    _no_bias(hf)
    cap = hf.get("final_logit_softcapping")
    return {"hidden_act": _activation(hf, "hidden_activation"), "norm_offset": 1.0, "norm_layout": "sandwich",
            "embed_scale": True, "query_pre_attn_scalar": float(hf["query_pre_attn_scalar"]),
            "final_softcap": None if cap is None else float(cap), **_windows(hf, default_types)}


def _write_gemma(cfg: ModelConfig) -> dict:
    scalar = cfg.query_pre_attn_scalar
    scalar = int(scalar) if float(scalar).is_integer() else scalar  # transformers' field is an int
    return {"hidden_activation": _HF_ACTIVATIONS[cfg.hidden_act], "query_pre_attn_scalar": scalar,
            "final_logit_softcapping": cfg.final_softcap, "attention_bias": False, **_write_windows(cfg)}


def _read_gemma2(hf: dict) -> dict:
    cap = hf.get("attn_logit_softcapping")
    alternating = lambda n: [SLIDING if (i + 1) % 2 else FULL for i in range(n)]
    return {**_read_gemma(hf, alternating), "attn_softcap": None if cap is None else float(cap)}


def _write_gemma2(cfg: ModelConfig) -> dict:
    return {**_write_gemma(cfg), "attn_logit_softcapping": cfg.attn_softcap}


def _read_gemma3(hf: dict) -> dict:
    """Gemma 3 adds q/k norms and a RoPE of its own for sliding layers; transformers does not
    apply its attn_logit_softcapping key, and neither does vinejax."""
    if hf.get("use_bidirectional_attention"):
        raise UnsupportedModelError("use_bidirectional_attention=True (an encoder) is not supported")
    every = int(hf.get("sliding_window_pattern", 6))
    local = _rope_params(hf, SLIDING)
    if local.get("rope_type", "default") not in (None, "default"):
        raise UnsupportedModelError(f"unsupported sliding-layer rope_type {local['rope_type']!r}; supported: default")
    theta = local.get("rope_theta") or hf.get("rope_local_base_freq") or 10000.0
    pattern = lambda n: [SLIDING if (i + 1) % every else FULL for i in range(n)]
    return {**_read_gemma(hf, pattern), "qk_norm": "head", "rope_local_theta": float(theta)}


def _write_gemma3(cfg: ModelConfig) -> dict:
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta}
    full = {"rope_theta": cfg.rope_theta, "rope_type": "default", **cfg.rope_scaling_dict}
    return {**_write_gemma(cfg), "rope_parameters": {FULL: full, SLIDING: local},
            "rope_local_base_freq": cfg.rope_local_theta, "attn_logit_softcapping": None}


def _read_olmo2(hf: dict) -> dict:
    _no_bias(hf)
    return {"hidden_act": _activation(hf), "qk_norm": "all", "norm_layout": "post"}


def _read_phi3(hf: dict) -> dict:
    factor = _rope_params(hf).get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    return {"hidden_act": _activation(hf), "partial_rotary_factor": float(factor), **_windows(hf, _every_layer)}


def _write_phi3(cfg: ModelConfig) -> dict:
    return {**_write_mistral(cfg), "partial_rotary_factor": cfg.partial_rotary_factor}


def _read_smollm3(hf: dict) -> dict:
    """SmolLM3: RoPE on the layers `no_rope_layers` marks 1 (default: all but every 4th)."""
    _no_bias(hf)
    n = int(hf["num_hidden_layers"])
    interval = int(hf.get("no_rope_layer_interval", 4))
    rope = hf.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    windows = _windows(hf, lambda n: [SLIDING if not r else FULL for r in rope]) if hf.get("use_sliding_window") else {}
    return {"hidden_act": _activation(hf), "rope_layers": tuple(rope), **windows}


def _write_smollm3(cfg: ModelConfig) -> dict:
    return {"hidden_act": _HF_ACTIVATIONS[cfg.hidden_act], "attention_bias": False, "mlp_bias": False,
            "no_rope_layers": list(cfg.rope_layers or (1,) * cfg.num_layers),
            "use_sliding_window": cfg.sliding_window is not None, **_write_windows(cfg)}


_GEMMA_DEFAULTS = {"tie_word_embeddings": True, "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096,
                   "hidden_activation": "gelu_pytorch_tanh"}

FAMILIES = {
    "llama": Family("LlamaForCausalLM", hf_keys.LAYER_KEYS, _read_llama, _write_llama),
    "mistral": Family("MistralForCausalLM", hf_keys.LAYER_KEYS, _read_mistral, _write_mistral,
                      {"sliding_window": 4096}),
    "qwen2": Family("Qwen2ForCausalLM", hf_keys.LAYER_KEYS, _read_qwen2, _write_qwen2),
    "qwen3": Family("Qwen3ForCausalLM", {**hf_keys.LAYER_KEYS, **hf_keys.QK_NORMS}, _read_qwen3, _write_qwen3,
                    {"head_dim": 128}),
    "gemma2": Family("Gemma2ForCausalLM", hf_keys.GEMMA_LAYER_KEYS, _read_gemma2, _write_gemma2,
                     {**_GEMMA_DEFAULTS, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}),
    "gemma3_text": Family("Gemma3ForCausalLM", {**hf_keys.GEMMA_LAYER_KEYS, **hf_keys.QK_NORMS}, _read_gemma3,
                          _write_gemma3, {**_GEMMA_DEFAULTS, "rope_theta": 1_000_000.0}),
    "olmo2": Family("Olmo2ForCausalLM", hf_keys.OLMO2_LAYER_KEYS, _read_olmo2, _write_llama),
    "phi3": Family("Phi3ForCausalLM", hf_keys.PHI3_LAYER_KEYS, _read_phi3, _write_phi3),
    "smollm3": Family("SmolLM3ForCausalLM", hf_keys.LAYER_KEYS, _read_smollm3, _write_smollm3,
                      {"tie_word_embeddings": True, "rope_theta": 2_000_000.0}),
}
ARCHITECTURES = {name: family.architecture for name, family in FAMILIES.items()}


def family_of(hf: dict) -> Family:
    """The `Family` of a HF config dict; `UnsupportedModelError` naming the supported types."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise unsupported_model_type(model_type)
    return FAMILIES[model_type]


def config_from_hf(hf: dict, dtype: Optional[str] = None, param_dtype: Optional[str] = None, **overrides) -> ModelConfig:
    """A `ModelConfig` from a Hugging Face config dict (the parsed `config.json`).

    `param_dtype` defaults to the checkpoint's `dtype` / `torch_dtype` (float32 when absent) and
    `dtype` (compute) defaults to `param_dtype`; `export_dtype` is the checkpoint's own (float32
    when absent). `overrides`
    are passed to `ModelConfig` (e.g. `remat=True`, `value_head=True`). Raises
    `UnsupportedModelError` (a ValueError) for an unsupported `model_type`, activation, RoPE type,
    dtype, MLP biases, or projection biases where the family has none.
    """
    family = family_of(hf)
    hf = {**family.defaults, **hf}
    if hf.get("mlp_bias", False):
        raise UnsupportedModelError("mlp_bias=True is not supported")
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    theta, scaling = _rope(hf)
    ckpt_dtype = _normalise_dtype(hf.get("dtype", hf.get("torch_dtype")))
    param_dtype = param_dtype or ckpt_dtype or "float32"
    kwargs = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        model_type=hf["model_type"],
        bos_token_id=_token_id(hf.get("bos_token_id")),
        eos_token_id=_token_id(hf.get("eos_token_id")),
        pad_token_id=_token_id(hf.get("pad_token_id")),
        dtype=dtype or param_dtype,
        param_dtype=param_dtype,
        export_dtype=ckpt_dtype or "float32",  # what transformers loads a folder without a dtype as
        **family.read(hf),
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
    if cfg.partial_rotary_factor != 1.0:
        rope["partial_rotary_factor"] = cfg.partial_rotary_factor
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
    hf.update(FAMILIES[cfg.model_type].write(cfg))
    return hf
