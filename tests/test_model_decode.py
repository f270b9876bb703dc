"""`vinejax.model.decode`: one-token decode steps reproduce transformers' logits position by position."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers_hf
from vinejax.model import decode_caches, decode_step, decode_weights, forward_cached, init_cache, load_hf_model


@pytest.mark.parametrize("variant", ["llama3_rope", "qwen2_tied"])  # GQA 4:1 + llama3 RoPE; q/k/v bias + tied head
def test_decode_steps_match_transformers(variant):
    path = helpers_hf.cached_tiny(variant)
    cfg, params = load_hf_model(path)
    tokens = helpers_hf.random_tokens(2, 11, seed=3)
    ref = helpers_hf.torch_logits(helpers_hf.load_torch(path), tokens)  # [2, 11, V]
    prefill = np.array([3, 6], np.int32)  # rows start decoding at different positions
    prompts = np.where(np.arange(11)[None] < prefill[:, None], tokens, 0)
    _, _, cache = forward_cached(params, cfg, jnp.asarray(prompts), init_cache(cfg, 2, 16), new_lengths=prefill)
    weights = decode_weights(params, cfg)
    caches = decode_caches(cache)
    step = jax.jit(decode_step, static_argnums=2)
    for i in range(5):  # feed token at position prefill + i, compare the next-token logits
        pos = prefill + i
        logits, caches = step(params, weights, cfg, jnp.asarray(tokens[[0, 1], pos]), caches)
        np.testing.assert_allclose(np.asarray(logits), ref[[0, 1], pos], atol=2e-4, rtol=1e-4)
        np.testing.assert_array_equal(np.asarray(caches.lengths), pos + 1)
    assert len(caches.k) == cfg.num_layers and caches.k[0].shape == (2, cfg.num_kv_heads, 16, cfg.head_dim)
