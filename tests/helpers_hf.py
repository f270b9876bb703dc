"""Tiny seeded random Hugging Face models (fp32, torch CPU) saved to a folder, for parity tests.

Shared by model, sampler and training tests. Everything here imports torch lazily, so test modules
that only need the size constants do not pay for it. Typical use:

    path = helpers_hf.save_tiny(tmp_path, "llama_gqa")
    hf_model = helpers_hf.load_torch(path)              # transformers model, eval mode, fp32
    logits = helpers_hf.torch_logits(hf_model, tokens, attention_mask)
"""
from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np

VOCAB = 128
HIDDEN = 64
LAYERS = 2
INTERMEDIATE = 128

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

# name -> (model_type, extra config kwargs)
VARIANTS = {
    "llama_gqa": ("llama", dict(num_attention_heads=4, num_key_value_heads=2)),
    "llama_mha": ("llama", dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama3_rope": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, rope_scaling=LLAMA3_ROPE, rope_theta=500000.0)),
    "qwen2_tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2_untied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "mistral_gqa": ("mistral", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=None)),
    "mistral_mha": ("mistral", dict(num_attention_heads=4, num_key_value_heads=4, sliding_window=None)),
}
WINDOW = 6  # sliding window of the windowed variants: shorter than the test sequences
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}
# One variant per family beyond Llama / Mistral / Qwen2, each with the switches that family adds
# (and a sliding window shorter than the sequences wherever the family has windows).
FAMILY_VARIANTS = {
    "mistral_window": ("mistral", dict(sliding_window=WINDOW)),
    "qwen3_tied": ("qwen3", dict(head_dim=24, tie_word_embeddings=True)),
    "qwen3_window": ("qwen3", dict(head_dim=24, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    "gemma2": ("gemma2", dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, attn_logit_softcapping=2.0,
                              final_logit_softcapping=3.0, tie_word_embeddings=True)),
    "gemma3": ("gemma3_text", dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW,
                                   layer_types=["sliding_attention", "full_attention"], rope_parameters=GEMMA3_ROPE,
                                   tie_word_embeddings=True)),
    "olmo2": ("olmo2", dict()),
    "phi3": ("phi3", dict(sliding_window=WINDOW, partial_rotary_factor=0.5)),
    "smollm3": ("smollm3", dict(no_rope_layers=[1, 0], use_sliding_window=True, sliding_window=WINDOW)),
}
VARIANTS.update(FAMILY_VARIANTS)


def tiny_config(model_type: str = "llama", **overrides):
    """A transformers config of `model_type` with the tiny shared sizes (overridable)."""
    import transformers

    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", seed: int = 0, std: float = 0.2, **overrides):
    """A seeded random fp32 *ForCausalLM in eval mode.

    Weights are N(0, std) (larger than HF's 0.02 init so logits differ meaningfully between
    positions); norm weights are 1 + N(0, 0.1) and biases N(0, 0.1) so every tensor matters.
    """
    import torch
    import transformers

    cfg = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_tiny(
    directory, variant: str = "llama_gqa", seed: int = 0, max_shard_size: Optional[str] = None, **overrides
) -> pathlib.Path:
    """Build `VARIANTS[variant]` (plus `overrides`) and `save_pretrained` it to directory/variant."""
    model_type, kwargs = VARIANTS[variant]
    model = tiny_model(model_type, seed=seed, **{**kwargs, **overrides})
    path = pathlib.Path(directory) / variant
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(path), **extra)
    return path


def load_torch(path):
    """Load a folder with transformers in fp32 eval mode (eager attention)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def torch_logits(model, tokens, attention_mask=None, position_ids=None) -> np.ndarray:
    """fp32 logits [B, T, V] as numpy from a transformers model."""
    import torch

    kwargs = {"input_ids": torch.as_tensor(np.asarray(tokens), dtype=torch.long)}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    if position_ids is not None:
        kwargs["position_ids"] = torch.as_tensor(np.asarray(position_ids), dtype=torch.long)
    with torch.no_grad():
        return model(**kwargs).logits.float().numpy()


def random_tokens(batch: int, length: int, seed: int = 0, vocab: int = VOCAB) -> np.ndarray:
    """int32 tokens in [3, vocab) (avoids pad/bos/eos ids 0..2)."""
    return np.random.RandomState(seed).randint(3, vocab, size=(batch, length)).astype(np.int32)


_CACHE: dict = {}


def cached_tiny(variant: str = "llama_gqa", seed: int = 0) -> pathlib.Path:
    """`save_tiny` once per process (under a temp dir) and reuse the folder; do not modify it."""
    import tempfile

    key = (variant, seed)
    if key not in _CACHE:
        _CACHE[key] = save_tiny(tempfile.mkdtemp(prefix="vinejax_tiny_"), variant, seed=seed)
    return _CACHE[key]
