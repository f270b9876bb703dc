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

# The paper's base models (Hugging Face config.json values).
PAPER_SHAPES = {
    # realtreetune/rho-1b-sft-* = microsoft/rho-math-1b-v0.1, a TinyLlama-1.1B
    "rho1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
                  num_kv_heads=4, head_dim=64, max_position_embeddings=2048, rms_norm_eps=1e-5,
                  bos_token_id=1, eos_token_id=2),
    # deepseek-ai/deepseek-math-7b-base
    "deepseek7b": dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_layers=30, num_heads=32,
                       num_kv_heads=32, head_dim=128, max_position_embeddings=4096, rms_norm_eps=1e-6,
                       bos_token_id=100000, eos_token_id=100001),
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
    return ModelConfig(**PAPER_SHAPES[name], dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat)


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
