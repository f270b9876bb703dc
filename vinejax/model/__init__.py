"""Llama-family decoder (pure functions) and Hugging Face checkpoint import/export.

Importing this package never imports torch.
"""
from vinejax.model.config import SUPPORTED_MODEL_TYPES, ModelConfig
from vinejax.model.hf import load_hf_model, read_hf_config, save_hf_model
from vinejax.model.hf_config import config_from_hf, config_to_hf
from vinejax.model.llama import (
    KVCache,
    forward,
    forward_cached,
    init_cache,
    init_params,
    param_logical_axes,
    param_shapes,
    value_head,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "KVCache",
    "ModelConfig",
    "config_from_hf",
    "config_to_hf",
    "forward",
    "forward_cached",
    "init_cache",
    "init_params",
    "load_hf_model",
    "param_logical_axes",
    "param_shapes",
    "read_hf_config",
    "save_hf_model",
    "value_head",
]
