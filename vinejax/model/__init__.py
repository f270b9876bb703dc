"""Llama-family decoder (pure functions) and Hugging Face checkpoint import/export.

Importing this package never imports torch.
"""
from vinejax.model.config import SUPPORTED_MODEL_TYPES, ModelConfig
from vinejax.model.decode import DecodeCaches, decode_caches, decode_step, decode_weights
from vinejax.model.hf import load_hf_model, read_hf_config, save_hf_model
from vinejax.model.hf_config import config_from_hf, config_to_hf
from vinejax.model.llama import (
    KVCache,
    Rope,
    apply_rope,
    attention,
    constrain_cache,
    embed,
    forward,
    forward_cached,
    init_cache,
    init_params,
    lm_logits,
    param_logical_axes,
    param_shapes,
    rms_norm,
    rope_tables,
    value_head,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "DecodeCaches",
    "KVCache",
    "ModelConfig",
    "Rope",
    "apply_rope",
    "attention",
    "config_from_hf",
    "config_to_hf",
    "constrain_cache",
    "decode_caches",
    "decode_step",
    "decode_weights",
    "embed",
    "forward",
    "forward_cached",
    "init_cache",
    "init_params",
    "lm_logits",
    "load_hf_model",
    "param_logical_axes",
    "param_shapes",
    "read_hf_config",
    "rms_norm",
    "rope_tables",
    "save_hf_model",
    "value_head",
]
