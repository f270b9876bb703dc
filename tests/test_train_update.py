"""The optimizer schedule (DeepSpeed's log warmup, as the official configs run it), the official
ratio > 10 rule per micro-batch, and the non-finite guard of the jitted steps."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vinejax.config import base_config
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.rl.batch import RolloutBatch
from vinejax.rl.losses import PolicyLossConfig
from vinejax.train import update

MODEL = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=8)


def test_log_warmup_follows_deepspeed_warmupdecaylr():
    # DeepSpeed WarmupDecayLR (warmup_type "log"): gamma(it) = ln(it + 1) / ln(W) for it < W,
    # then (T - it) / (T - W). The official MATH run: T = 16,000 steps, W = ceil(3% of T) = 480.
    lr, total = 1e-6, 16_000
    schedule = update.lr_schedule(lr, total, 0.03, "log")
    for it, gamma in [(0, 0.0), (9, math.log(10) / math.log(480)), (239, math.log(240) / math.log(480)),
                      (479, math.log(480) / math.log(480)), (480, 1.0), (8000, 8000 / 15520), (15999, 1 / 15520)]:
        assert float(schedule(it)) == pytest.approx(lr * gamma, rel=1e-5, abs=1e-14), it
    assert float(schedule(9)) == pytest.approx(0.37296 * lr, rel=1e-4)  # spot value by hand
    linear = update.lr_schedule(lr, total, 0.03, "linear")
    assert float(linear(240)) == pytest.approx(0.5 * lr)  # half way up the linear ramp
    with pytest.raises(ValueError, match="cosine"):
        update.lr_schedule(lr, total, 0.03, "cosine")


def _batch(rng, rows=8, cols=12, ratio_rows=()):
    tokens = rng.integers(0, MODEL.vocab_size, (rows, cols)).astype(np.int32)
    mask = np.zeros((rows, cols), bool)
    mask[:, 4:] = True
    old = np.where(mask, -2.0, 0.0).astype(np.float32)
    for r in ratio_rows:  # old log-probs far below the policy's: ratio e^20 on those rows
        old[r, 4:] = -30.0
    adv = np.where(mask, rng.normal(size=(rows, cols)), 0.0).astype(np.float32)
    return RolloutBatch(tokens=tokens, response_mask=mask, old_logprobs=old, ref_logprobs=old.copy(),
                        advantages=adv, rewards=np.zeros(rows, np.float32))


def _step(params, batch, micro, lr=1e-2):
    optim = base_config().optim
    optim.lr, optim.warmup_frac, optim.warmup_shape = lr, 0.0, "linear"
    optimizer = update.make_optimizer(optim, total_steps=10)
    opt_state = optimizer.init(params)
    mb = jax.tree.map(lambda x: x.reshape((micro, x.shape[0] // micro) + x.shape[1:]), batch)
    return update.policy_step(jax.tree.map(jnp.copy, params), opt_state, mb, model_cfg=MODEL,
                              loss_cfg=PolicyLossConfig(kl_coef=0.0, whiten=False), optimizer=optimizer,
                              temperature=1.0)


def test_ratio_rule_zeroes_one_micro_batch_and_still_steps():
    params = llama.init_params(MODEL, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = _batch(rng, ratio_rows=(0, 1))  # rows 0-1 form micro-batch 0 of 4
    p_all, _, m_all = _step(params, batch, 4)
    assert float(m_all["skipped"]) == pytest.approx(0.25) and float(m_all["nonfinite"]) == 0.0
    # the same step where micro-batch 0 has a normal ratio but no advantage (so no gradient, KL
    # is off) and the same token count: equal gradients, hence equal params
    clean = _batch(np.random.default_rng(0))
    clean = clean.replace(advantages=np.concatenate([np.zeros((2, 12), np.float32), clean.advantages[2:]]))
    p_ref, _, m_ref = _step(params, clean, 4)
    assert float(m_ref["skipped"]) == 0.0
    for a, b in zip(jax.tree.leaves(p_all), jax.tree.leaves(p_ref)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p_all), jax.tree.leaves(params)))
    assert moved > 1e-4  # the optimizer still stepped


def test_nonfinite_loss_skips_the_step():
    params = llama.init_params(MODEL, jax.random.key(0))
    batch = _batch(np.random.default_rng(1))
    batch = batch.replace(advantages=np.where(batch.response_mask, np.nan, 0.0).astype(np.float32))
    new, _, m = _step(params, batch, 2)
    assert float(m["nonfinite"]) == 1.0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert bool(update.all_finite(new)) and not bool(update.all_finite({"x": jnp.array([1.0, jnp.inf])}))


def test_update_that_divides_zero_by_zero_is_skipped():
    """Adam with eps = 0 (a legal setting) turns the zero gradient of unused embedding rows into
    0/0: the step is skipped instead of writing NaN into the params."""
    params = llama.init_params(MODEL, jax.random.key(0))
    optim = base_config().optim
    optim.lr, optim.warmup_frac, optim.warmup_shape, optim.eps = 1e-2, 0.0, "linear", 0.0
    optimizer = update.make_optimizer(optim, total_steps=10)
    batch = _batch(np.random.default_rng(2))
    mb = jax.tree.map(lambda x: x.reshape((2, 4) + x.shape[1:]), batch)
    new, _, m = update.policy_step(jax.tree.map(jnp.copy, params), optimizer.init(params), mb, model_cfg=MODEL,
                                   loss_cfg=PolicyLossConfig(), optimizer=optimizer, temperature=1.0)
    assert float(m["nonfinite"]) == 1.0 and np.isfinite(float(m["grad_norm"]))
    assert bool(update.all_finite(new))


def test_micro_batch_token_mean_weighs_each_micro_batch_equally():
    """token_mean "micro_batch" (the official per-device token mean, then the mean over devices)
    equals the batch token mean with each micro-batch's advantages scaled by N_tok / (M · n_m):
    the PPO-clip loss is positively homogeneous in the advantages."""
    params = llama.init_params(MODEL, jax.random.key(0))
    batch = _batch(np.random.default_rng(3))
    mask = batch.response_mask.copy()
    mask[:2, 6:] = False  # micro-batch 0 of 4 (rows 0-1): 2 response tokens per row, the others 8
    batch = batch.replace(response_mask=mask, advantages=np.where(mask, batch.advantages, 0.0).astype(np.float32))
    optimizer = optax.sgd(1.0)  # params move by the gradient itself (Adam's first step hides its scale)
    counts = mask.reshape(4, 2, -1).sum(axis=(1, 2))  # n_m
    scale = np.repeat(mask.sum() / (4 * counts), 2)[:, None].astype(np.float32)  # per row

    def step(b, token_mean):
        mb = jax.tree.map(lambda x: x.reshape((4, 2) + x.shape[1:]), b)
        return update.policy_step(jax.tree.map(jnp.copy, params), optimizer.init(params), mb, model_cfg=MODEL,
                                  loss_cfg=PolicyLossConfig(kl_coef=0.0, whiten=False, token_mean=token_mean),
                                  optimizer=optimizer, temperature=1.0)

    p_micro, _, _ = step(batch, "micro_batch")
    p_scaled, _, _ = step(batch.replace(advantages=batch.advantages * scale), "batch")
    p_batch, _, _ = step(batch, "batch")
    for a, b in zip(jax.tree.leaves(p_micro), jax.tree.leaves(p_scaled)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p_micro), jax.tree.leaves(p_batch))) > 1e-4
