"""The model shape of a config, without weights.

In order: a built-in shape named on the command line; the config.json of the folder the run starts
from (`model.init_from`'s export or `model.hf_path`); the built-in shape of a paper model, found
by its name (a key of `config.PAPER_MODELS`) among the `_`-separated words of `output_dir`'s last
part (`paper_config` writes `runs/<task>_<model>_<algo>`); else the tiny random model of the
`model.*` keys (its vocabulary from the task's tokenizer).
"""
from __future__ import annotations

import copy
import math
import os
from typing import Optional

import jax

from vinejax.config import PAPER_MODELS, ConfigError
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.model.hf import read_hf_config
from vinejax.model.hf_config import config_from_hf
from vinejax.train.context import build_context, policy_source

# The paper's base models and the Qwen3 models of `config.PAPER_MODELS`: their Hugging Face
# config.json values (read like a folder's, by `config_from_hf`).
PAPER_SHAPES = {
    # realtreetune/rho-1b-sft-* = microsoft/rho-math-1b-v0.1, a TinyLlama-1.1B
    "rho1b": dict(model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                  num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                  bos_token_id=1, eos_token_id=2),
    # deepseek-ai/deepseek-math-7b-base
    "deepseek7b": dict(model_type="llama", vocab_size=102400, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=30, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=100000, eos_token_id=100001),
    # Qwen/Qwen3-1.7B-Base (tied embeddings) and Qwen/Qwen3-8B-Base
    "qwen3-1.7b": dict(model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
                       bos_token_id=151643, eos_token_id=151643),
    "qwen3-8b": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False,
                     bos_token_id=151643, eos_token_id=151643),
}


def paper_model_of(cfg) -> Optional[str]:
    """The paper model (a PAPER_MODELS key) named in `output_dir`'s last part, or None."""
    words = os.path.basename(os.path.normpath(cfg.output_dir)).split("_")
    found = [name for name in PAPER_MODELS if name in words and name in PAPER_SHAPES]
    return found[0] if len(found) == 1 else None


def built_in_config(name: str, cfg) -> ModelConfig:
    """The built-in shape `name` with the config's dtypes and remat."""
    if name not in PAPER_SHAPES:
        raise ConfigError(f"unknown model shape {name!r}; built-in shapes: {', '.join(PAPER_SHAPES)}")
    m = cfg.model
    return config_from_hf(PAPER_SHAPES[name], dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat)


def model_config_of(cfg, shape: Optional[str] = None) -> tuple[ModelConfig, str]:
    """(ModelConfig, where its shape came from) of `cfg`, without loading weights. A starting
    folder that does not exist yet (e.g. the SFT stage's run dir) is skipped, and said so."""
    if shape:
        return built_in_config(shape, cfg), f"built-in shape {shape}"
    missing = ""
    if cfg.model.hf_path or cfg.model.init_from:
        try:
            source = policy_source(cfg)
        except FileNotFoundError as error:
            missing = f" ({error}: planned without it)"
        else:
            m = cfg.model
            model_cfg = config_from_hf(read_hf_config(source), dtype=m.dtype, param_dtype=m.param_dtype)
            return model_cfg.replace(remat=m.remat), f"{source}/config.json"
    name = paper_model_of(cfg)
    if name:
        return built_in_config(name, cfg), f"built-in shape {name} (named in output_dir){missing}"
    bare = copy.deepcopy(cfg)
    bare.model.hf_path, bare.model.init_from = "", ""
    ctx, _, _ = build_context(bare, load_params=False)
    return ctx.model_cfg, f"random model of the model.* keys{missing}"


def param_count(model_cfg: ModelConfig) -> int:
    """Number of parameters."""
    return sum(math.prod(s.shape) for s in jax.tree.leaves(llama.param_shapes(model_cfg)))
