"""The jitted policy update gives the same loss, metrics and params on a (2, 4) mesh as on one device,
and the whole loop runs on the 8 fake CPU devices."""
import jax
import numpy as np
import pytest
from flax import linen as nn
from test_train_loop import read_metrics, tiny_config

from vinejax import sharding
from vinejax.model import llama
from vinejax.model.config import ModelConfig
from vinejax.rl.batch import RolloutBatch
from vinejax.rl.losses import PolicyLossConfig
from vinejax.train import loop, update
from vinejax.train.batching import to_microbatches

MODEL = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6)


def random_batch(rng: np.random.Generator, rows=16, cols=24) -> RolloutBatch:
    tokens = rng.integers(0, MODEL.vocab_size, (rows, cols)).astype(np.int32)
    prompt = rng.integers(2, 8, rows)
    total = np.minimum(prompt + rng.integers(1, cols - 8, rows), cols)
    col = np.arange(cols)[None]
    mask = (col >= prompt[:, None]) & (col < total[:, None])
    old = np.where(mask, -rng.uniform(0.5, 4.0, (rows, cols)), 0).astype(np.float32)
    ref = np.where(mask, old + rng.normal(0, 0.3, (rows, cols)), 0).astype(np.float32)
    adv = np.where(mask, rng.normal(0, 1, (rows, cols)), 0).astype(np.float32)
    return RolloutBatch(tokens=tokens, response_mask=mask, old_logprobs=old, ref_logprobs=ref,
                        advantages=adv, rewards=rng.integers(0, 2, rows).astype(np.float32))


def one_step(mesh, params, batch, micro_batch=8):
    shardings = sharding.tree_shardings(llama.param_logical_axes(MODEL), llama.param_shapes(MODEL), mesh)
    params = jax.device_put(params, shardings)
    optimizer = update.make_optimizer(_optim(), total_steps=10)
    opt_state = update.init_opt_state(optimizer, params, shardings)
    micro = to_microbatches(mesh, batch, micro_batch)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        params, _, metrics = update.policy_step(params, opt_state, micro, model_cfg=MODEL,
                                                loss_cfg=PolicyLossConfig(kl_coef=0.1), optimizer=optimizer,
                                                temperature=0.6)
    return jax.device_get(params), {k: float(v) for k, v in jax.device_get(metrics).items()}


def _optim():
    from vinejax.config import base_config

    c = base_config().optim
    # A large Adam eps keeps the first update proportional to the gradient, so the comparison
    # is not dominated by sign flips of gradients that are zero up to rounding.
    c.lr, c.warmup_frac, c.warmup_shape, c.eps = 1e-2, 0.0, "linear", 1e-3
    return c


def test_policy_step_same_on_mesh_as_one_device():
    params = jax.device_get(llama.init_params(MODEL, jax.random.key(0), std=0.2))
    batch = random_batch(np.random.default_rng(0))
    one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    eight = sharding.make_mesh((2, 4, 1))
    p1, m1 = one_step(one, params, batch)
    p8, m8 = one_step(eight, params, batch)
    for key in ("pg_loss", "kl", "approx_kl", "ratio", "pg_clipfrac", "grad_norm"):
        assert m1[key] == pytest.approx(m8[key], rel=1e-4, abs=1e-6), key
    assert m1["grad_norm"] > 0
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, atol=2e-5)
    moved = max(float(np.abs(a - i).max()) for a, i in zip(jax.tree.leaves(p1), jax.tree.leaves(params)))
    assert moved > 1e-4


def test_loop_runs_on_eight_fake_devices(tmp_path):
    cfg = tiny_config(tmp_path, "vineppo", iterations=1, **{"mesh.shape": (2, 4, 1), "ppo.micro_batch": 8})
    loop.run(cfg)
    (record,) = read_metrics(cfg)
    assert np.isfinite(record["pg_loss"]) and np.isfinite(record["kl"])
    assert record["mc/num_states"] >= 8


def test_optimizer_state_is_sharded_like_the_params():
    """Adam's moments take the params' layout (a plain jitted init replicates them on every device:
    2x the params per device); the step count is replicated."""
    mesh = sharding.make_mesh((1, 8, 1))
    shardings = sharding.tree_shardings(llama.param_logical_axes(MODEL), llama.param_shapes(MODEL), mesh)
    params = jax.device_put(llama.init_params(MODEL, jax.random.key(0)), shardings)
    optimizer = update.make_optimizer(_optim(), total_steps=10)
    state = update.init_opt_state(optimizer, params, shardings)
    adam = state[1][0]
    for moments in (adam.mu, adam.nu):
        for leaf, param in zip(jax.tree.leaves(moments), jax.tree.leaves(params)):
            assert leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim)
            assert leaf.dtype == param.dtype and not leaf.any()
    assert adam.count.sharding.is_fully_replicated
    embed = params["embed"].sharding.shard_shape(params["embed"].shape)
    assert embed == (MODEL.vocab_size, MODEL.hidden_size // 8)  # really sharded, not replicated
