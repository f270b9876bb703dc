"""Decoder hyper-parameters, read from or written to a Hugging Face `config.json` dict."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax.numpy as jnp

# The model families `hf_config.FAMILIES` reads and writes (their HF `model_type`).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "olmo2", "phi3", "smollm3")

FULL, SLIDING = "full_attention", "sliding_attention"  # HF layer types


class UnsupportedModelError(ValueError):
    """A checkpoint asks for an architecture or numerics vinejax does not implement."""


def unsupported_model_type(model_type: Any) -> UnsupportedModelError:
    """The one-line error for a `model_type` outside `SUPPORTED_MODEL_TYPES`."""
    return UnsupportedModelError(
        f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder shape and numerics: one decoder, the families differing only in the switches below.

    `dtype` is the compute dtype of activations, `param_dtype` the storage dtype of weights,
    `export_dtype` the dtype `save_hf_model` writes (the checkpoint's own when loaded from one;
    None = `param_dtype`). `rope_scaling` is None or a dict like HF's (`{"rope_type": "llama3",
    "factor": 8.0, ...}`); it and the per-layer tuples are stored as tuples so the config stays
    hashable (a static jit argument).

    Family switches (defaults: Llama): `qk_norm` RMSNorm of each query/key before RoPE, "head"
    over each head (Qwen3, Gemma 3) or "all" over all heads together (OLMo 2); `norm_offset` 1
    scales normed values by (1 + w) (Gemma); `norm_layout` "pre" (norm → sublayer → residual),
    "sandwich" (norms before and after each sublayer, Gemma 2/3) or "post" (after only, OLMo 2);
    `embed_scale` multiplies embeddings by √hidden (Gemma); `hidden_act` the GLU gate ("silu",
    "gelu_tanh"); `query_pre_attn_scalar` scores × its **-0.5 instead of head_dim**-0.5 (Gemma);
    `attn_softcap` / `final_softcap` c·tanh(x/c) on attention scores / logits (Gemma 2);
    `sliding_window` w: a sliding layer's query sees the last w positions (itself included);
    `layer_types` which layers slide (None with a window: all of them, as Mistral); `rope_local_theta`
    the RoPE base of sliding layers (Gemma 3; None = the global RoPE); `rope_layers` 0 where a
    layer uses no RoPE (SmolLM3); `partial_rotary_factor` the rotated fraction of head_dim (Phi-3).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[Any] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projection biases (Qwen2)
    model_type: str = "llama"
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2
    pad_token_id: Optional[int] = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    export_dtype: Optional[str] = None
    remat: bool = False  # gradient checkpointing of every decoder layer
    value_head: bool = False  # scalar value head on the last hidden state (PPO critic)
    attention_impl: str = "auto"  # auto (cuDNN flash attention where it applies, else XLA), xla, cudnn
    qk_norm: str = "none"
    norm_offset: float = 0.0
    norm_layout: str = "pre"
    embed_scale: bool = False
    hidden_act: str = "silu"
    query_pre_attn_scalar: Optional[float] = None
    attn_softcap: Optional[float] = None
    final_softcap: Optional[float] = None
    sliding_window: Optional[int] = None
    layer_types: Optional[tuple] = None
    rope_local_theta: Optional[float] = None
    rope_layers: Optional[tuple] = None
    partial_rotary_factor: float = 1.0

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise unsupported_model_type(self.model_type)
        _one_of("attention_impl", self.attention_impl, ("auto", "xla", "cudnn"))
        _one_of("qk_norm", self.qk_norm, ("none", "head", "all"))
        _one_of("norm_layout", self.norm_layout, ("pre", "sandwich", "post"))
        _one_of("hidden_act", self.hidden_act, ("silu", "gelu_tanh"))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        self._normalise_layers()

    def _normalise_layers(self):
        """layer_types: None without sliding layers, else L types; rope_layers: None (all) or L 0/1."""
        window = self.sliding_window if self.sliding_window and self.sliding_window > 0 else None
        types = None if self.layer_types is None else tuple(self.layer_types)
        if types is not None and (len(types) != self.num_layers or not set(types) <= {FULL, SLIDING}):
            raise ValueError(f"layer_types must hold {self.num_layers} of {FULL!r} / {SLIDING!r}, got {types}")
        if window is None and types is not None and SLIDING in types:
            raise ValueError("layer_types has sliding layers but sliding_window is not set")
        if window is not None and types is None:
            types = (SLIDING,) * self.num_layers
        if types is None or SLIDING not in types:
            window, types = None, None
        object.__setattr__(self, "sliding_window", window)
        object.__setattr__(self, "layer_types", types)
        if self.rope_layers is not None:
            rope = tuple(int(bool(r)) for r in self.rope_layers)
            if len(rope) != self.num_layers:
                raise ValueError(f"rope_layers must hold {self.num_layers} entries, got {len(rope)}")
            object.__setattr__(self, "rope_layers", None if all(rope) else rope)

    @property
    def rope_scaling_dict(self) -> dict:
        return dict(self.rope_scaling or ())

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def attn_scale(self) -> float:
        """The factor of q·k scores (before soft-capping)."""
        return 1.0 / math.sqrt(self.query_pre_attn_scalar or self.head_dim)

    @property
    def rope_dim(self) -> int:
        """The leading dims of each head that RoPE rotates."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def layer_windows(self) -> tuple:
        """Per layer: its sliding window, or 0 for full attention."""
        if self.layer_types is None:
            return (0,) * self.num_layers
        return tuple(self.sliding_window if t == SLIDING else 0 for t in self.layer_types)

    @property
    def layer_ropes(self) -> tuple:
        """Per layer: its RoPE, "global", "local" (sliding layers with `rope_local_theta`) or "none"."""
        rope = self.rope_layers or (1,) * self.num_layers
        local = self.rope_local_theta is not None
        return tuple("none" if not r else ("local" if local and w else "global")
                     for r, w in zip(rope, self.layer_windows))

    @property
    def rope_kinds(self) -> tuple:
        """The distinct `layer_ropes`, sorted."""
        return tuple(sorted(set(self.layer_ropes)))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
