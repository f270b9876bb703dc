"""The loss conventions against the peers' formulas, written out here in float64 numpy: verl's
`core_algos` (compute_policy_loss with clip_ratio_low / high / c, kl_penalty, agg_loss) and TRL's
GRPO loss types. Each config option reaches the jitted loss (`context.policy_loss_config`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_testing import microbatches, random_rollouts

from vinejax.config import base_config
from vinejax.rl import losses as L
from vinejax.rl.batch import RolloutBatch
from vinejax.train.context import policy_loss_config


def batch_of(d, seed=0):
    rng = np.random.default_rng(seed)
    mask = d["response_mask"]
    adv = np.where(mask, rng.normal(size=mask.shape), 0.0).astype(np.float32)
    lp = np.where(mask, d["old_logprobs"] + rng.normal(scale=0.4, size=mask.shape), 0.0).astype(np.float32)
    batch = RolloutBatch(tokens=jnp.asarray(d["tokens"]), response_mask=jnp.asarray(mask),
                         old_logprobs=jnp.asarray(d["old_logprobs"]), ref_logprobs=jnp.asarray(d["ref_logprobs"]),
                         advantages=jnp.asarray(adv), rewards=jnp.asarray(d["rewards"]))
    entropy = np.where(mask, rng.uniform(0, 3, size=mask.shape), 0.0).astype(np.float32)
    return batch, jnp.asarray(lp), jnp.asarray(entropy)


def verl_pg_loss_mat(lp, old, adv, low, high, clip_c):
    """verl `compute_policy_loss` (dual clip): the per-token loss matrix."""
    ratio = np.exp(lp - old)
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - low, 1 + high)
    clipped = np.maximum(l1, l2)
    if clip_c is None:
        return clipped
    l3 = -adv * clip_c
    return np.where(adv < 0, np.minimum(l3, clipped), clipped)


def verl_agg_loss(mat, mask, mode, norm_length):
    """verl `agg_loss` / TRL: token-mean (`bnpo`), seq-mean-token-mean (`grpo`), Dr. GRPO's
    sum / (sequences · max_completion_length) (TRL `dr_grpo`)."""
    m = mask.astype(np.float64)
    rows = m.any(1)
    if mode == "token-mean":
        return (mat * m).sum() / m.sum()
    if mode == "seq-mean-token-mean":
        per_seq = (mat * m).sum(1)[rows] / m.sum(1)[rows]
        return per_seq.mean()
    return (mat * m).sum() / (rows.sum() * norm_length)


def f64(x):
    return np.asarray(x, np.float64)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("clip", [(0.2, None, None), (0.2, 0.28, None), (0.2, 0.28, 3.0)])
def test_policy_loss_matches_the_peer_formulas(mode, clip):
    """PPO-clip with asymmetric and dual clipping, k1 KL (not clamped), an entropy bonus and each
    loss aggregation, set from the config, against verl / TRL written out in float64."""
    low, high, dual = clip
    c = base_config()
    c.ppo.clip_eps, c.ppo.clip_eps_high, c.ppo.dual_clip = low, high or 0.0, dual or 0.0
    c.ppo.kl_estimator, c.ppo.kl_coef, c.ppo.entropy_coef = "k1", 0.05, 0.01
    c.ppo.loss_aggregation, c.ppo.loss_norm_length = mode, 16
    cfg = policy_loss_config(c)
    assert cfg.kl_clamp is None  # k1 takes no clamp (verl "kl", TRL)
    d = random_rollouts(11, B=8, T=16)
    batch, lp, ent = batch_of(d)
    mask = np.asarray(batch.response_mask)
    n_tok, n_seq = batch.num_tokens(), batch.num_sequences()
    den = L.token_denominators(batch.response_mask, (n_tok, n_seq), 1, cfg)
    loss, _ = jax.jit(L.policy_loss, static_argnums=2)(lp, batch, cfg, ent, den, n_seq)

    mat = verl_pg_loss_mat(f64(lp), f64(batch.old_logprobs), f64(batch.advantages), low, high or low, dual)
    k1 = f64(lp) - f64(batch.ref_logprobs)  # verl kl_penalty "kl", no clamp: negative tokens count
    assert (k1[mask] < 0).any()
    kl = (np.where(mask, k1, 0.0)).sum() / mask.any(1).sum()  # per-sequence sum, mean over sequences
    ref = verl_agg_loss(mat, mask, mode, 16) + 0.05 * kl - 0.01 * verl_agg_loss(f64(ent), mask, mode, 16)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-6)


def test_k1_was_clamped_before():
    """The old `kl_clamp=(0, ppo.kl_clamp)` for every estimator zeroed negative k1 tokens; k2 and
    k3 keep the paper's [0, kl_clamp]."""
    c = base_config()
    assert policy_loss_config(c).kl_clamp == (0.0, 10.0)  # k3, the paper
    c.ppo.kl_estimator = "k2"
    assert policy_loss_config(c).kl_clamp == (0.0, 10.0)
    d = random_rollouts(12, B=6, T=12)
    batch, lp, _ = batch_of(d, 1)
    mask = np.asarray(batch.response_mask)
    unclamped = L.kl_loss(lp, batch.ref_logprobs, batch.response_mask, "k1", L.kl_clamp_for("k1", 10.0))[0]
    clamped = L.kl_loss(lp, batch.ref_logprobs, batch.response_mask, "k1", (0.0, 10.0))[0]
    k1 = np.where(mask, f64(lp) - f64(batch.ref_logprobs), 0.0)
    np.testing.assert_allclose(float(unclamped), k1.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(clamped), np.maximum(k1, 0).sum(), rtol=1e-5)
    assert float(clamped) - float(unclamped) > 0.1


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregation_is_exact_over_micro_batches(mode):
    """The micro-batches' losses, each divided by `token_denominators` of the optimizer batch, add
    up to the optimizer batch's loss (so gradient accumulation is exact for every mode)."""
    cfg = L.PolicyLossConfig(kl_coef=0.1, aggregation=mode, norm_length=16, entropy_coef=0.02)
    d = random_rollouts(13, B=8, T=16)
    batch, lp, ent = batch_of(d, 2)
    counts = (batch.num_tokens(), batch.num_sequences())
    f = jax.jit(L.policy_loss, static_argnums=2)
    full = f(lp, batch, cfg, ent, L.token_denominators(batch.response_mask, counts, 1, cfg), counts[1])[0]
    micro = microbatches(batch, 4)
    total = 0.0
    for i in range(4):
        mb = jax.tree.map(lambda x: x[i], micro)
        rows = slice(2 * i, 2 * i + 2)
        den = L.token_denominators(mb.response_mask, counts, 4, cfg)
        total += f(lp[rows], mb, cfg, ent[rows], den, counts[1])[0]
    np.testing.assert_allclose(float(total), float(full), rtol=1e-5)
