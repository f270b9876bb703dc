"""Logit parity check of a HF model folder: transformers/torch vs vinejax.

    python -m vinejax.tools.compare_hf PATH [--dtype float32] [--tol 1e-4]
                                             [--batch 2 --length 32 --seed 0]

Both run on the same random token batch with padding: row 0 is full length, odd rows are
right-padded and the other rows left-padded (real lengths random in [length/2, length]). Only
real tokens are compared. Prints the max absolute logit difference; exit status 0 when it is
<= tol, 1 otherwise, 2 with one line for a folder vinejax cannot read (missing, or a
`model_type` it does not support: checked before torch loads anything). torch is imported here
only (the vinejax package never imports it).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np


def padded_batch(batch: int, length: int, vocab: int, seed: int = 0, pad_id: int = 0):
    """(tokens, mask, positions) int32 [batch, length] with mixed left/right padding.

    Row 0 is unpadded, odd rows right-padded, other rows left-padded; positions count real
    tokens from 0 (0 on padding).
    """
    rng = np.random.RandomState(seed)
    tokens = rng.randint(min(3, vocab - 1), vocab, size=(batch, length)).astype(np.int32)
    mask = np.zeros((batch, length), np.int32)
    for b in range(batch):
        n = length if b == 0 else rng.randint(max(1, length // 2), length + 1)
        if b % 2:
            mask[b, :n] = 1
        else:
            mask[b, length - n :] = 1
    tokens = np.where(mask > 0, tokens, pad_id).astype(np.int32)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


def torch_logits(path: str, tokens, mask, positions, dtype: str = "float32") -> np.ndarray:
    """Logits [B, T, V] (as float32 numpy) from transformers with eager attention."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            position_ids=torch.as_tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


def vinejax_logits(path: str, tokens, mask, positions, dtype: str = "float32") -> np.ndarray:
    """Logits [B, T, V] (float32 numpy) from vinejax `forward` with segment_ids = mask."""
    import jax

    from vinejax.model import forward, load_hf_model

    cfg, params = load_hf_model(path, dtype=dtype, param_dtype=dtype)
    fwd = jax.jit(forward, static_argnums=1)
    logits, _ = fwd(params, cfg, tokens, positions, mask)
    return np.asarray(logits, np.float32)


def max_abs_diff(path: str, dtype: str = "float32", batch: int = 2, length: int = 32, seed: int = 0) -> float:
    """Max |logit_torch - logit_vinejax| over real (non-padding) tokens of a random padded batch."""
    from vinejax.model.hf import read_hf_config
    from vinejax.model.hf_config import config_from_hf

    hf = read_hf_config(path)
    config_from_hf(hf)  # an unsupported model_type (or numerics) fails here, before torch loads it
    vocab = int(hf["vocab_size"])
    tokens, mask, positions = padded_batch(batch, length, vocab, seed)
    ref = torch_logits(path, tokens, mask, positions, dtype)
    ours = vinejax_logits(path, tokens, mask, positions, dtype)
    real = mask.astype(bool)
    return float(np.abs(ref[real] - ours[real]).max())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (0 within tolerance, 1 above)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="HF model folder (config.json + safetensors)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from vinejax.model.config import UnsupportedModelError

    try:
        diff = max_abs_diff(args.path, args.dtype, args.batch, args.length, args.seed)
    except (UnsupportedModelError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    ok = diff <= args.tol
    print(f"max_abs_logit_diff={diff:.3e} tol={args.tol:.1e} {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
