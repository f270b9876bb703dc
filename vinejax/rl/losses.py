"""Losses of VinePPO and its baselines (PPO, RestEM, DPO+), masked, over token-aligned ``[B, T]`` arrays.

Each term returns ``(loss_sum, count, metrics)``: the loss is ``loss_sum / count`` and every
metric is a ``(sum, count)`` pair too, so micro-batch results are aggregated exactly by adding
them (``add_metrics``) and dividing once (``reduce_metrics``). Masked entries may hold garbage
(even inf/nan): they are replaced before any arithmetic, so they change no value or gradient.

``policy_loss`` combines terms with different denominators (tokens for PPO, sequences
for KL); it takes the denominators of the whole optimizer batch so that the sum of micro-batch
losses (and gradients) equals the full-batch loss exactly.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

Metrics = dict[str, tuple[jax.Array, jax.Array]]


def add_metrics(a: Metrics, b: Metrics) -> Metrics:
    """Aggregate two metric dicts of (sum, count) pairs (micro-batch accumulation)."""
    return jax.tree.map(jnp.add, a, b)


def reduce_metrics(m: Metrics) -> dict[str, jax.Array]:
    """{name: sum / max(count, 1)}."""
    return {k: s / jnp.maximum(c, 1) for k, (s, c) in m.items()}


def _f32(x, mask, fill=0.0):
    """Masked copy in at least float32 (bf16 -> f32; f64 kept for gradient checks)."""
    x = jnp.asarray(x)
    return jnp.where(mask, x, fill).astype(jnp.promote_types(x.dtype, jnp.float32))


# ----------------------------------------------------------------------------- policy
def ppo_clip_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                  mask: jax.Array, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                  dual_clip: float | None = None, weights: jax.Array | None = None):
    """PPO-clip policy loss summed over valid tokens.

        ρ_t = exp(lp_t − old_t)
        ℓ_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε_low, 1 + ε_high))      (ε_high defaults to ε_low)
        dual clip c > 1:  ℓ_t = min(ℓ_t, −c A_t) where A_t < 0
    Returns ``(Σ_t m_t w_t ℓ_t, Σ_t m_t, metrics)`` (``weights`` w broadcastable to [B, T],
    default 1: the loss aggregation, ``token_weights``) with metrics ``pg_loss``, ``pg_clipfrac``
    (fraction of tokens where the clipped branch is active), ``approx_kl`` (k3 of KL(old‖new):
    ρ − 1 − log ρ), ``ratio`` (mean ρ) and, with dual clip, ``pg_dual_clipfrac``.
    Shapes: all inputs [B, T] (mask bool).
    """
    eps_hi = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = _f32(logprobs, mask) - _f32(old_logprobs, mask)              # [B, T]
    ratio = jnp.exp(log_ratio)
    adv = _f32(advantages, mask)
    loss1 = -adv * ratio
    loss2 = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_hi)
    loss = jnp.maximum(loss1, loss2)
    m = mask.astype(jnp.float32)
    count = m.sum()
    metrics = {
        "pg_clipfrac": ((m * (loss2 > loss1)).sum(), count),
        "approx_kl": ((m * (ratio - 1.0 - log_ratio)).sum(), count),
        "ratio": ((m * ratio).sum(), count),
    }
    if dual_clip is not None:
        dual = -dual_clip * adv
        use_dual = (adv < 0) & (dual < loss)
        loss = jnp.where(use_dual, dual, loss)
        metrics["pg_dual_clipfrac"] = ((m * use_dual).sum(), count)
    total = (m * loss).sum()
    metrics["pg_loss"] = (total, count)  # the plain token mean of ℓ, whatever the weights
    return (total if weights is None else (m * weights * loss).sum()), count, metrics


# ----------------------------------------------------------------------------- KL
def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array,
               kind: str = "k3", clamp: tuple[float, float] | None = None) -> jax.Array:
    """Per-token KL(π‖π_ref) estimate from sampled tokens, f32[B, T], 0 off the mask.

        k1 = lp − ref;   k2 = ½ (lp − ref)²;   k3 = exp(ref − lp) − (ref − lp) − 1
    optionally clamped per token to ``[lo, hi]`` (paper: k3 clamped to [0, 10]).
    """
    d = _f32(ref_logprobs, mask) - _f32(logprobs, mask)                      # ref − lp
    if kind == "k1":
        kl = -d
    elif kind == "k2":
        kl = 0.5 * d * d
    elif kind == "k3":
        kl = jnp.expm1(d) - d
    else:
        raise ValueError(f"unknown KL estimator {kind!r}")
    if clamp is not None:
        kl = jnp.clip(kl, clamp[0], clamp[1])
    return jnp.where(mask, kl, 0.0)


def kl_loss(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array, kind: str = "k3",
            clamp: tuple[float, float] | None = (0.0, 10.0)):
    """KL loss: per-sequence sum of per-token KL, mean over sequences with ≥ 1 valid token.

    Returns ``(Σ_b Σ_t kl_bt, #sequences, metrics)``; metrics ``kl`` (per sequence) and
    ``kl_token`` (per token). Shapes [B, T]. The default clamp [0, 10] is the paper's k3
    setting; pass ``clamp=None`` for k1 (which can be negative).
    """
    kl = kl_penalty(logprobs, ref_logprobs, mask, kind, clamp)               # [B, T]
    n_seq = mask.any(axis=1).sum().astype(jnp.float32)
    total = kl.sum()
    return total, n_seq, {"kl": (total, n_seq), "kl_token": (total, mask.sum().astype(jnp.float32))}


def kl_reward_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array,
                      beta: float, kind: str = "k1",
                      clamp: tuple[float, float] | None = None) -> jax.Array:
    """f32[B, T] per-token penalty ``β·kl_t`` to subtract from token rewards (KL-in-reward PPO)."""
    return beta * kl_penalty(logprobs, ref_logprobs, mask, kind, clamp)


# ----------------------------------------------------------------------------- critic, entropy
def clipped_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
                       mask: jax.Array, clip_range: float = 0.2):
    """PPO critic loss ``½ max((v − R)², (clip(v, v_old ± c) − R)²)`` summed over valid tokens.

    Returns ``(sum, count, metrics)`` with ``vf_loss``, ``vf_clipfrac``, ``values`` (mean v).
    Shapes [B, T].
    """
    v, v_old, ret = _f32(values, mask), _f32(old_values, mask), _f32(returns, mask)
    v_clip = jnp.clip(v, v_old - clip_range, v_old + clip_range)
    l1, l2 = (v - ret) ** 2, (v_clip - ret) ** 2
    m = mask.astype(jnp.float32)
    count = m.sum()
    total = 0.5 * (m * jnp.maximum(l1, l2)).sum()
    return total, count, {"vf_loss": (total, count), "vf_clipfrac": ((m * (l2 > l1)).sum(), count),
                          "values": ((m * v).sum(), count)}


def entropy_sum(entropy: jax.Array, mask: jax.Array):
    """``(Σ m·H, Σ m, {"entropy": ...})`` for the token entropies [B, T] (metric or bonus)."""
    m = mask.astype(jnp.float32)
    total = (m * _f32(entropy, mask)).sum()
    return total, m.sum(), {"entropy": (total, m.sum())}


# ----------------------------------------------------------------------------- combined
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Static (hashable) settings; defaults are the paper's (VINEPPO.md §2).

    ``aggregation`` (verl's ``loss_agg_mode`` names) weighs the token losses of the PPO-clip
    and entropy terms: "token-mean" Σ ℓ / N_tok (the paper; ``token_mean`` "batch" counts the
    optimizer batch's tokens, "micro_batch" each micro-batch's, the official per-device mean);
    "seq-mean-token-mean" each sequence's token mean, then the mean over sequences (GRPO);
    "seq-mean-token-sum-norm" Σ ℓ / (N_seq · ``norm_length``), Dr. GRPO's constant normaliser
    (TRL ``loss_type="dr_grpo"``). ``whiten``: advantages whitened over the optimizer batch first.
    """

    clip_eps: float = 0.2
    clip_eps_high: float | None = None     # asymmetric clip (DAPO's ε_high); None = clip_eps
    dual_clip: float | None = None         # e.g. 3.0; None = off
    kl_coef: float = 1e-4                  # β, KL in the loss
    kl_estimator: str = "k3"
    kl_clamp: tuple[float, float] | None = (0.0, 10.0)  # per-token clamp (k2, k3); k1 takes None
    entropy_coef: float = 0.0              # bonus (paper: none, entropy only logged)
    max_mean_ratio: float | None = 10.0    # skip the update when the batch mean ratio exceeds it
    aggregation: str = "token-mean"
    token_mean: str = "batch"              # token-mean only: "batch" or "micro_batch"
    norm_length: int = 1024                # seq-mean-token-sum-norm's constant (generation budget)
    whiten: bool = True


def kl_clamp_for(kind: str, upper: float) -> tuple[float, float] | None:
    """The per-token clamp of a KL estimator: [0, upper] for k2 and k3 (the paper's k3 clamp),
    None for k1, whose per-token values are negative where the policy is below the reference
    (verl's "kl" and TRL's k1 are not clamped); None when ``upper`` <= 0."""
    return None if kind == "k1" or upper <= 0 else (0.0, float(upper))


def token_denominators(mask: jax.Array, batch_counts: tuple, num_micro: int, cfg: PolicyLossConfig) -> jax.Array:
    """What each token loss of one micro-batch (mask bool[mb, T]) is divided by, a scalar or
    f32[mb, 1], so that the micro-batches' sums add up to the optimizer batch's aggregated loss
    (``PolicyLossConfig.aggregation``). ``batch_counts``: (tokens, sequences) of the optimizer
    batch; ``num_micro``: its number of micro-batches."""
    n_tok, n_seq = (jnp.maximum(jnp.asarray(c, jnp.float32), 1.0) for c in batch_counts)
    if cfg.aggregation == "seq-mean-token-mean":
        return jnp.maximum(mask.sum(-1, keepdims=True).astype(jnp.float32), 1.0) * n_seq    # [mb, 1]
    if cfg.aggregation == "seq-mean-token-sum-norm":
        return n_seq * cfg.norm_length
    if cfg.aggregation != "token-mean":
        raise ValueError(f"unknown loss aggregation {cfg.aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
    if cfg.token_mean == "batch":
        return batch_counts[0]
    if cfg.token_mean == "micro_batch":
        return jnp.maximum(mask.sum().astype(jnp.float32), 1.0) * num_micro
    raise ValueError(f"token_mean must be 'batch' or 'micro_batch', not {cfg.token_mean!r}")


def policy_loss(logprobs: jax.Array, batch, cfg: PolicyLossConfig = PolicyLossConfig(),
                entropy: jax.Array | None = None, num_tokens=None, num_sequences=None, kl_coef=None):
    """Actor loss of every PPO-style algorithm (VinePPO, PPO, GRPO, RLOO):
    ``Σ ℓ_pg / N_tok + β Σ_b Σ_t kl_bt / N_seq − c_H Σ H / N_tok``.

    Args:
      logprobs: f32[B, T] current-policy log-probs of ``batch.tokens`` (aligned, with
        temperature).
      batch: a ``RolloutBatch`` (uses response_mask, old_logprobs, ref_logprobs, advantages).
      entropy: optional f32[B, T] token entropies (logged; bonus if ``cfg.entropy_coef``).
      kl_coef: optional β as an array (an adaptive controller's current value); default cfg.kl_coef.
      num_tokens, num_sequences: denominators. Default: this batch's own counts. For
        micro-batching pass the optimizer batch's counts (``RolloutBatch.num_tokens()`` /
        ``num_sequences()`` of the full batch): then Σ over micro-batches of the returned loss
        equals the full-batch loss exactly. ``num_tokens`` may be f32[B, 1] per row (the
        aggregation modes, ``token_denominators``).
    Returns:
      ``(loss, metrics)``: scalar loss; metrics as (sum, count) pairs (``pg_loss``,
      ``pg_clipfrac``, ``approx_kl``, ``ratio``, ``kl``, ``kl_token``, ``entropy``). Decide the
      paper's skip with ``should_skip`` on the aggregated metrics.
    """
    mask = batch.response_mask
    per_row = num_tokens is not None and jnp.ndim(num_tokens) > 0  # [B, 1]: weigh tokens, then sum
    weights = 1.0 / jnp.maximum(num_tokens, 1) if per_row else None
    pg_sum, n_tok_local, metrics = ppo_clip_loss(
        logprobs, batch.old_logprobs, batch.advantages, mask,
        cfg.clip_eps, cfg.clip_eps_high, cfg.dual_clip, weights)
    kl_sum, n_seq_local, kl_metrics = kl_loss(logprobs, batch.ref_logprobs, mask,
                                              cfg.kl_estimator, cfg.kl_clamp)
    metrics.update(kl_metrics)
    n_tok = 1.0 if per_row else jnp.maximum(n_tok_local if num_tokens is None else num_tokens, 1)
    n_seq = jnp.maximum(n_seq_local if num_sequences is None else num_sequences, 1)
    beta = cfg.kl_coef if kl_coef is None else kl_coef  # a traced β (adaptive KL) overrides the static one
    loss = pg_sum / n_tok + beta * kl_sum / n_seq
    if entropy is not None:
        ent_sum, _, ent_metrics = entropy_sum(entropy, mask)
        metrics.update(ent_metrics)
        if cfg.entropy_coef:
            ent_weighted = ent_sum if not per_row else entropy_sum(entropy * weights, mask)[0]
            loss = loss - cfg.entropy_coef * ent_weighted / n_tok
    return loss, metrics


def should_skip(metrics: Metrics, cfg: PolicyLossConfig = PolicyLossConfig()) -> jax.Array:
    """bool scalar: the (aggregated) mean ratio exceeds ``cfg.max_mean_ratio`` (paper: 10)."""
    if cfg.max_mean_ratio is None:
        return jnp.zeros((), bool)
    s, c = metrics["ratio"]
    return s / jnp.maximum(c, 1) > cfg.max_mean_ratio


# ----------------------------------------------------------------------------- RestEM, DPO+
def sequence_mean_nll(logprobs: jax.Array, mask: jax.Array):
    """RestEM's MLE loss: each sequence's mean token NLL, summed over sequences.

        ℓ_b = −(Σ_t m_bt lp_bt) / (Σ_t m_bt)
    Returns ``(Σ_b ℓ_b, #sequences with ≥ 1 valid token, metrics)``; metrics ``nll`` (per
    sequence) and ``nll_token`` (per token). Rows without a valid token count for nothing.
    Shapes: logprobs [B, T] (log-probs of the targets), mask bool[B, T].
    """
    lp = _f32(logprobs, mask)                                                # [B, T]
    n_tok = mask.sum(axis=1).astype(jnp.float32)                             # [B]
    has = n_tok > 0
    tok_sum = -lp.sum(axis=1)                                                # [B]
    per_seq = jnp.where(has, tok_sum / jnp.maximum(n_tok, 1.0), 0.0)
    total = per_seq.sum()
    n_seq = has.sum().astype(jnp.float32)
    return total, n_seq, {"nll": (total, n_seq), "nll_token": (tok_sum.sum(), n_tok.sum())}


class DpoTerms(NamedTuple):
    """DPO+'s loss coefficients (`dpo.beta`, `dpo.lam`, `dpo.label_smoothing`); the defaults are
    the official MATH setting (GSM8K uses β 0.3)."""

    beta: float = 0.1
    lam: float = 50.0
    label_smoothing: float = 0.0


def dpo_positive_loss(chosen_logprobs: jax.Array, rejected_logprobs: jax.Array,
                      chosen_ref_logprobs: jax.Array, rejected_ref_logprobs: jax.Array,
                      chosen_mask: jax.Array, rejected_mask: jax.Array, terms: DpoTerms = DpoTerms()):
    """DPO-Positive (Smaug) loss summed over the valid (chosen, rejected) pairs.

        s_w = Σ_t lp_t over the chosen response, s_l over the rejected one (policy);
        r_w, r_l the same sums under the frozen reference
        z = (s_w − s_l) − (r_w − r_l) − λ·max(0, r_w − s_w)
        ℓ = −(1 − ε)·log σ(β z) − ε·log σ(−β z)                 (ε = label smoothing, paper 0)
    (β, λ, ε) = `terms`. A pair is valid when
    both of its responses have ≥ 1 valid token. Row b of the chosen arrays and row b of the
    rejected arrays form pair b; each side has its own [B, T] layout and mask. Where r_w = s_w
    exactly (policy = reference) the max splits its gradient ½/½, as torch's does.
    Returns ``(Σ_b ℓ_b, #valid pairs, metrics)``; see ``dpo_positive_loss_from_sums``.
    """
    valid = chosen_mask.any(axis=1) & rejected_mask.any(axis=1)               # [B]
    return dpo_positive_loss_from_sums(
        _f32(chosen_logprobs, chosen_mask).sum(axis=1),
        _f32(rejected_logprobs, rejected_mask).sum(axis=1),
        _f32(chosen_ref_logprobs, chosen_mask).sum(axis=1),
        _f32(rejected_ref_logprobs, rejected_mask).sum(axis=1), valid, terms)


def dpo_positive_loss_from_sums(s_w: jax.Array, s_l: jax.Array, r_w: jax.Array, r_l: jax.Array,
                                valid: jax.Array, terms: DpoTerms = DpoTerms()):
    """``dpo_positive_loss`` on per-response log-prob sums f32[B] (policy s, reference r).

    The reference enters only through its sums, so they can be computed once and stored as one
    float per response. ``valid: bool[B]`` marks real pairs (other rows may hold garbage).
    Returns ``(Σ_b ℓ_b, #valid pairs, metrics)``; metrics (per pair): ``dpo_loss``,
    ``dpo_margin`` (z), ``dpo_positive_gap`` (max(0, r_w − s_w)), ``chosen_reward`` (s_w − r_w),
    ``rejected_reward`` (s_l − r_l), ``reward_accuracy`` (chosen_reward > rejected_reward),
    ``chosen_higher`` (s_w > s_l) and ``ref_chosen_higher`` (r_w > r_l).
    """
    s_w, s_l, r_w, r_l = (_f32(x, valid) for x in (s_w, s_l, r_w, r_l))      # [B] each
    gap = jnp.maximum(0.0, r_w - s_w)
    beta, lam, label_smoothing = terms
    z = (s_w - s_l) - (r_w - r_l) - lam * gap
    loss = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * z) \
        - label_smoothing * jax.nn.log_sigmoid(-beta * z)
    v = valid.astype(jnp.float32)
    n = v.sum()

    def per_pair(x):
        return (v * x).sum(), n

    total = (v * loss).sum()
    return total, n, {
        "dpo_loss": (total, n), "dpo_margin": per_pair(z), "dpo_positive_gap": per_pair(gap),
        "chosen_reward": per_pair(s_w - r_w), "rejected_reward": per_pair(s_l - r_l),
        "reward_accuracy": per_pair(s_w - r_w > s_l - r_l), "chosen_higher": per_pair(s_w > s_l),
        "ref_chosen_higher": per_pair(r_w > r_l),
    }


def adaptive_kl_coef(coef, kl, target: float, horizon: float, num_episodes: int):
    """The official adaptive KL controller (Ziegler et al.; PPOHParams `adap_kl_ctrl`), applied
    once per iteration: β ← β·(1 + clip(kl / target − 1, −0.2, 0.2)·n / horizon), where kl is the
    iteration's mean per-sequence KL (k1) of the sampling policy to the reference and n its
    number of episodes."""
    error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
    return coef * (1.0 + error * num_episodes / horizon)
