"""RestEM (sequence-mean NLL) and DPO+ losses vs numpy / torch references; gradients; padding."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from rl_testing import random_rollouts

from vinejax.rl import losses as L


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def pair_data(seed, B=10, Tw=14, Tl=18):
    """Chosen / rejected sides with their own layouts; garbage (±99) off the masks."""
    w, l = random_rollouts(seed, B=B, T=Tw), random_rollouts(seed + 100, B=B, T=Tl)
    return dict(cw=w["logprobs"], rw=w["ref_logprobs"], mw=w["response_mask"],
                cl=l["logprobs"], rl=l["ref_logprobs"], ml=l["response_mask"])


def call_dpo(d, **kw):
    return L.dpo_positive_loss(d["cw"], d["cl"], d["rw"], d["rl"], d["mw"], d["ml"], L.DpoTerms(**kw))


def ref_dpo(d, beta, lam, eps):
    """Python-loop DPO+ over the valid pairs: [(loss, z, gap, s_w, s_l, r_w, r_l)]."""
    rows = []
    for b in range(d["mw"].shape[0]):
        if not (d["mw"][b].any() and d["ml"][b].any()):
            continue
        s_w = sum(float(v) for v, m in zip(d["cw"][b], d["mw"][b]) if m)
        r_w = sum(float(v) for v, m in zip(d["rw"][b], d["mw"][b]) if m)
        s_l = sum(float(v) for v, m in zip(d["cl"][b], d["ml"][b]) if m)
        r_l = sum(float(v) for v, m in zip(d["rl"][b], d["ml"][b]) if m)
        gap = max(0.0, r_w - s_w)
        z = (s_w - s_l) - (r_w - r_l) - lam * gap
        loss = -(1 - eps) * log_sigmoid(beta * z) - eps * log_sigmoid(-beta * z)
        rows.append((loss, z, gap, s_w, s_l, r_w, r_l))
    return rows


def torch_official_formula(s_w, s_l, r_w, r_l, beta, lam, eps):
    """The official trainer's expression (dpo_positive_trainer.py) on sequence sums, in torch."""
    z = (s_w - s_l) - (r_w - r_l) - lam * torch.max(torch.zeros(1, dtype=s_w.dtype), r_w - s_w)
    loss = -torch.nn.functional.logsigmoid(beta * z) * (1 - eps) \
        - torch.nn.functional.logsigmoid(-beta * z) * eps
    return loss.mean()


@pytest.mark.parametrize("beta,lam,eps",
                         [(0.1, 50.0, 0.0), (0.3, 50.0, 0.0), (0.3, 2.0, 0.1), (0.1, 0.0, 0.0)])
def test_dpo_positive_matches_reference(beta, lam, eps):
    d = pair_data(0)
    d["rw"] = np.where(d["mw"], d["cw"] + np.random.default_rng(5).normal(0, 0.5, d["cw"].shape), 99.0)
    s, c, m = jax.jit(L.dpo_positive_loss, static_argnames=("terms",))(
        d["cw"], d["cl"], d["rw"], d["rl"], d["mw"], d["ml"], terms=L.DpoTerms(beta, lam, eps))
    rows = ref_dpo(d, beta, lam, eps)
    assert float(c) == len(rows) <= 8              # rows 1, 2 (and any other empty one) are not pairs
    np.testing.assert_allclose(s, sum(r[0] for r in rows), rtol=1e-5)
    mm = L.reduce_metrics(m)
    n = len(rows)
    np.testing.assert_allclose(mm["dpo_loss"], sum(r[0] for r in rows) / n, rtol=1e-5)
    np.testing.assert_allclose(mm["dpo_margin"], sum(r[1] for r in rows) / n, rtol=1e-5)
    np.testing.assert_allclose(mm["dpo_positive_gap"], sum(r[2] for r in rows) / n, rtol=1e-5)
    for key, col, ref_col in (("chosen_reward", 3, 5), ("rejected_reward", 4, 6)):
        want = sum(r[col] - r[ref_col] for r in rows) / n
        np.testing.assert_allclose(mm[key], want, rtol=1e-5, atol=1e-6, err_msg=key)
    for key, hits in (("reward_accuracy", sum(r[3] - r[5] > r[4] - r[6] for r in rows)),
                      ("chosen_higher", sum(r[3] > r[4] for r in rows)),
                      ("ref_chosen_higher", sum(r[5] > r[6] for r in rows))):
        assert float(m[key][0]) == hits and 0 < hits < n, key
    assert 0 < sum(r[2] > 0 for r in rows) < n     # the positive term is active on some pairs


def test_dpo_positive_hand_case():
    # s_w = -3, s_l = -5, r_w = -2, r_l = -6: z = 2 - 4 - 50 * 1 = -52, loss = softplus(5.2)
    one = np.ones((1, 2), bool)
    pair = ([[-1.0, -2.0]], [[-5.0, 0.0]], [[-1.5, -0.5]], [[-3.0, -3.0]], one, one)
    s, c, _ = L.dpo_positive_loss(*pair)
    np.testing.assert_allclose(s, math.log1p(math.exp(5.2)), rtol=1e-6)
    assert float(c) == 1
    # λ = 0 is plain DPO: -log σ(β ((s_w - s_l) - (r_w - r_l))) = softplus(0.2)
    s0, _, _ = L.dpo_positive_loss(*pair, L.DpoTerms(lam=0.0))
    np.testing.assert_allclose(s0, math.log1p(math.exp(0.2)), rtol=1e-6)


def test_dpo_positive_grad_matches_torch_and_finite_difference():
    beta, lam, eps = 0.3, 2.0, 0.05
    d = pair_data(1, B=6, Tw=9, Tl=11)
    with jax.enable_x64(True):
        d64 = {k: (np.asarray(v, np.float64) if v.dtype == np.float32 else v) for k, v in d.items()}
        # pair 3: policy equals the reference on the chosen side (the tie of max(0, r_w - s_w))
        d64["rw"][3] = d64["cw"][3]

        def f(cw, cl):
            s, c, _ = L.dpo_positive_loss(cw, cl, d64["rw"], d64["rl"], d64["mw"], d64["ml"],
                                          L.DpoTerms(beta, lam, eps))
            return s / c

        gw, gl = (np.asarray(g) for g in jax.jit(jax.grad(f, argnums=(0, 1)))(d64["cw"], d64["cl"]))
        assert np.all(gw[~d["mw"]] == 0) and np.all(gl[~d["ml"]] == 0)
        # torch autograd of the official formula on the sequence sums (same tie rule: ½ each side)
        valid = d["mw"].any(1) & d["ml"].any(1)
        sums = {k: torch.tensor(np.where(d64[m], d64[k], 0.0).sum(1)[valid],
                                requires_grad=k in ("cw", "cl"))
                for k, m in (("cw", "mw"), ("cl", "ml"), ("rw", "mw"), ("rl", "ml"))}
        loss_t = torch_official_formula(sums["cw"], sums["cl"], sums["rw"], sums["rl"], beta, lam, eps)
        loss_t.backward()
        np.testing.assert_allclose(f(d64["cw"], d64["cl"]), loss_t.item(), rtol=1e-12)
        for k, b in enumerate(np.flatnonzero(valid)):   # each token gets its sequence's gradient
            np.testing.assert_allclose(gw[b][d["mw"][b]], sums["cw"].grad[k].item(), rtol=1e-10)
            np.testing.assert_allclose(gl[b][d["ml"][b]], sums["cl"].grad[k].item(), rtol=1e-10)
        h = 1e-6
        for b, t in list(zip(*np.nonzero(d["mw"])))[:6]:
            if b == 3:
                continue                          # the kink: no two-sided finite difference
            e = np.zeros_like(d64["cw"])
            e[b, t] = h
            fd = (f(d64["cw"] + e, d64["cl"]) - f(d64["cw"] - e, d64["cl"])) / (2 * h)
            np.testing.assert_allclose(gw[b, t], fd, rtol=1e-6, atol=1e-10)
        for b, t in list(zip(*np.nonzero(d["ml"])))[:6]:
            e = np.zeros_like(d64["cl"])
            e[b, t] = h
            fd = (f(d64["cw"], d64["cl"] + e) - f(d64["cw"], d64["cl"] - e)) / (2 * h)
            np.testing.assert_allclose(gl[b, t], fd, rtol=1e-6, atol=1e-10)


def test_dpo_positive_garbage_and_padding_change_nothing():
    d = pair_data(2)
    s, c, m = call_dpo(d)
    big = {}
    for side, T in (("w", 25), ("l", 21)):
        mask = np.zeros((13, T), bool)
        mask[:10, : d["m" + side].shape[1]] = d["m" + side]
        big["m" + side] = mask
        for k, junk in (("c" + side, np.inf), ("r" + side, np.nan)):
            x = np.full((13, T), junk, np.float32)
            x[:10, : d[k].shape[1]] = d[k]
            big[k] = np.where(mask, x, junk)
    s2, c2, m2 = jax.jit(L.dpo_positive_loss)(*(big[k] for k in ("cw", "cl", "rw", "rl", "mw", "ml")))
    np.testing.assert_allclose(s2, s, rtol=1e-6)
    assert float(c2) == float(c)
    for k in m:
        np.testing.assert_allclose(m2[k][0], m[k][0], rtol=1e-6, atol=1e-6, err_msg=k)
    g = jax.grad(lambda a, b: L.dpo_positive_loss(a, b, big["rw"], big["rl"], big["mw"], big["ml"])[0],
                 argnums=(0, 1))(jnp.asarray(big["cw"]), jnp.asarray(big["cl"]))
    for gi, mask in zip(g, (big["mw"], big["ml"])):
        assert np.all(np.isfinite(np.asarray(gi))) and np.all(np.asarray(gi)[~mask] == 0)


def test_dpo_positive_from_stored_sums_equals_token_form():
    d = pair_data(4)
    valid = d["mw"].any(1) & d["ml"].any(1)
    sums = [np.where(valid, np.where(d[m], d[k], 0.0).sum(1), np.nan).astype(np.float32)
            for k, m in (("cw", "mw"), ("cl", "ml"), ("rw", "mw"), ("rl", "ml"))]   # nan on non-pairs
    s, c, m = jax.jit(L.dpo_positive_loss_from_sums, static_argnames=("terms",))(*sums, valid,
                                                                                 terms=L.DpoTerms(beta=0.3))
    s_tok, c_tok, m_tok = call_dpo(d, beta=0.3)
    np.testing.assert_allclose(s, s_tok, rtol=1e-6)
    assert float(c) == float(c_tok) == valid.sum() < len(valid)
    for k in m_tok:
        np.testing.assert_allclose(m[k][0], m_tok[k][0], rtol=1e-5, atol=1e-5, err_msg=k)
    g = jax.grad(lambda x: L.dpo_positive_loss_from_sums(x, *sums[1:], valid)[0])(jnp.asarray(sums[0]))
    assert np.all(np.asarray(g)[~valid] == 0) and np.all(np.asarray(g)[valid] != 0)


def test_dpo_positive_microbatches_sum_to_the_batch_loss():
    d = pair_data(3, B=8)
    f = jax.jit(lambda cw, cl, rw, rl, mw, ml: L.dpo_positive_loss(cw, cl, rw, rl, mw, ml)[:2])
    g = jax.jit(jax.grad(lambda *a: L.dpo_positive_loss(*a[:6])[0] / a[6]))
    args = [d[k] for k in ("cw", "cl", "rw", "rl", "mw", "ml")]
    full, n = f(*args)
    total, grads = 0.0, []
    for half in (slice(0, 4), slice(4, 8)):
        part = [a[half] for a in args]
        total += f(*part)[0] / n
        grads.append(g(*part, n))
    np.testing.assert_allclose(total, full / n, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate(grads), g(*args, n), rtol=1e-6, atol=1e-9)


def test_sequence_mean_nll_matches_reference_and_gradient():
    d = random_rollouts(6, B=8, T=16)
    lp, mask = d["logprobs"], d["response_mask"]
    s, c, m = jax.jit(L.sequence_mean_nll)(lp, mask)
    per_seq = [-np.mean(lp[b][mask[b]].astype(np.float64)) for b in range(8) if mask[b].any()]
    np.testing.assert_allclose(s, sum(per_seq), rtol=1e-5)
    assert float(c) == len(per_seq) == 6                              # rows 1, 2 have no target
    mm = L.reduce_metrics(m)
    np.testing.assert_allclose(mm["nll_token"], -lp[mask].astype(np.float64).mean(), rtol=1e-5)
    # d/d lp_bt of the batch loss (Σ_b ℓ_b / #seq) is −1 / (n_b · #seq) on valid tokens, 0 elsewhere
    big = np.where(mask, lp, np.nan)
    grad = np.asarray(jax.grad(lambda x: L.sequence_mean_nll(x, mask)[0] / c)(big))
    n_b = np.maximum(mask.sum(1, keepdims=True), 1)
    np.testing.assert_allclose(grad, np.where(mask, -1.0 / (n_b * float(c)), 0.0), rtol=1e-6)


def test_compiles_once_per_shape():
    traces = []

    def step(*a):
        traces.append(1)
        return L.reduce_metrics(L.dpo_positive_loss(*a)[2])

    jstep = jax.jit(step)
    for seed in range(3):
        d = pair_data(seed)
        jax.block_until_ready(jstep(d["cw"], d["cl"], d["rw"], d["rl"], d["mw"], d["ml"]))
    assert len(traces) == 1
