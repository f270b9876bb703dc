"""Decoder hyper-parameters, read from or written to a Hugging Face `config.json` dict."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Llama-family decoder shape and numerics.

    `dtype` is the compute dtype of activations, `param_dtype` the storage dtype of weights.
    `rope_scaling` is None or a dict like HF's (`{"rope_type": "llama3", "factor": 8.0, ...}`);
    it is stored as a sorted tuple of items so the config stays hashable (a static jit argument).
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
    remat: bool = False  # gradient checkpointing of every decoder layer
    value_head: bool = False  # scalar value head on the last hidden state (PPO critic)
    attention_impl: str = "auto"  # auto (cuDNN flash attention where it applies, else XLA), xla, cudnn

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.attention_impl not in ("auto", "xla", "cudnn"):
            raise ValueError(f"attention_impl must be auto, xla or cudnn, got {self.attention_impl!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def rope_scaling_dict(self) -> dict:
        return dict(self.rope_scaling or ())

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
