"""A budget-global allocation of an iteration's Monte Carlo rollouts, in two decode rounds.

Round 1 (`pilot_counts`): ``pilot`` rollouts from every state whose value is not known. Round 2
(`allocate`): the rest of the iteration's budget goes where it lowers the error of the
advantages most, then V̂ = `values` (the plain mean of all of a state's rollouts).

Objective. A_i = V(s_{i+1}) − V(s_i) weights the T_i tokens of step i, V(s_L) = R is exact and the
states' estimates are independent, so the token-weighted squared advantage error is
    Σ_{b,i} T_{b,i} E(Â_{b,i} − A_{b,i})² = Σ_u w_u σ_u² / n_u,
    w_u = Σ over u's step slots (T_{b,i−1} + T_{b,i})     (`advantage_weights`; V(s_i) enters A_{i−1}
                                                          and A_i, the prompt only A_0),
    σ_u² = p_u (1 − p_u), n_u = rollouts of u. Known values cost nothing (n_u = 0, σ_u = 0).
Each state's σ_u² is replaced by its posterior mean given its *evidence* (`posterior_variance`),
and the budget is spent greedily on the largest marginal gains w_u E[σ_u²] (1/n − 1/(n + 1))
(optimal for a separable convex objective), n_u ≤ ``max_rollouts``.

Evidence, and why the estimate stays exactly unbiased. A state's evidence never includes its own
rollouts: optional stopping on them biases the mean, and the unbiased correction (adaptive.py's
Rao–Blackwell table) throws most of a small pilot away (with 2 pilot draws and "stop when
unanimous" the only unbiased estimate of a mixed pilot is 1/2, whatever follows). Instead the
states are split into two folds by step index parity (`folds`; a distinct state's step index is
the same in every episode through it, so a state's previous and next states are in the other
fold). The counts of fold f are a function of
    (a) the rewards R of the episodes (each R is one continuation of every state of its episode:
        R ~ Bernoulli(p_u) given the states, and is never averaged into V̂),
    (b) the known values and the structure (ids, tokens),
    (c) the round-1 rollouts of the states of the *other* fold only (`posterior_variance` reads
        a state's previous / next states), and the fold budgets (from (a), (b) only),
never of any fold-f rollout. So, conditionally on everything outside u's own rollouts, n_u is
fixed and u's rollouts are n_u i.i.d. Bernoulli(p_u) draws: E[s_u / n_u] = p_u exactly, for every
state, whatever the evidence model. `tests/test_rl_allocation.py` checks this by enumerating every
outcome of a small case. R enters only the counts, never V̂: V̂(s_i) must not depend on the action
taken at step i (the policy gradient's baseline condition).

Evidence model (only efficiency depends on it). Prior: the value is exactly 0 w.p. π0, exactly 1
w.p. π1 (settled), else Uniform(0, 1). A settled state's continuations all agree, so do its next
states' and its episodes' rewards; a state after a settled state is settled the same way. Given
k1 / k0 successes / failures among u's episode rewards and (weight ``child_weight``) its next
states' round-1 rollouts, and ρ_z = P(previous state settled at z | its round-1 rollouts):
    prior_z = ρ_z + (1 − ρ0 − ρ1) π_z,  prior_m = (1 − ρ0 − ρ1)(1 − π0 − π1),
    P(settled at 0) ∝ prior_0 [k1 = 0],  P(settled at 1) ∝ prior_1 [k0 = 0],
    P(mixed) ∝ prior_m B(1 + k1, 1 + k0),    E[σ²] = P(mixed) (1 + k1)(1 + k0) / ((2 + k)(3 + k)).

Shapes: B episodes, S step slots, U distinct states (ids index them), F = 2 folds.
Budgets are totals of rollouts over the iteration (pilot included).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
from scipy.special import betaln


class AllocationConfig(NamedTuple):
    """Rollout allocation settings (`vineppo.allocation`)."""

    pilot: int = 2                   # round-1 rollouts of every state whose value is unknown
    rollouts_per_state: float = 4.5  # iteration budget ÷ unknown states (K = 9 draws 9)
    max_rollouts: int = 32           # per state, pilot included
    child_weight: float = 1.0        # evidence weight of one round-1 rollout of a next state
    prior_settled: tuple = (0.3, 0.3)  # π0, π1: prior chance that a value is exactly 0 / 1


class IterationStates(NamedTuple):
    """What the loop knows of an iteration's distinct states before any MC rollout."""

    ids: np.ndarray          # int[B, S] distinct-state id of each episode's state slot; -1: absent
    rewards: np.ndarray      # f[B] episode rewards R (0/1)
    step_tokens: np.ndarray  # int[B, S] tokens of step i (what advantage A_i weights); 0 past L
    known: np.ndarray        # f[U] value known without sampling; NaN where unknown


def iteration_states(ids, rewards, step_tokens, known=None, num_states: Optional[int] = None) -> IterationStates:
    """Checked `IterationStates`; ``known`` defaults to all unknown over ``num_states`` (default
    max id + 1). Raises ValueError naming the first bad field."""
    ids = np.asarray(ids, np.int64)
    rewards = np.asarray(rewards, np.float64)
    tokens = np.asarray(step_tokens, np.float64)
    if ids.ndim != 2 or rewards.shape != ids.shape[:1] or tokens.shape != ids.shape:
        raise ValueError(f"allocation: ids must be [B, S], rewards [B], step_tokens [B, S]; got {ids.shape}, "
                         f"{rewards.shape}, {tokens.shape}")
    u = int(ids.max(initial=-1)) + 1 if num_states is None and known is None else (
        len(known) if known is not None else num_states)
    known = np.full(u, np.nan) if known is None else np.asarray(known, np.float64)
    if ids.max(initial=-1) >= len(known):
        raise ValueError(f"allocation: state id {ids.max()} >= number of states {len(known)}")
    if np.any((rewards != 0) & (rewards != 1)):
        raise ValueError("allocation: rewards must be 0/1")
    if np.any(tokens < 0):
        raise ValueError("allocation: step_tokens must be >= 0")
    if np.any((known < 0) | (known > 1)):
        raise ValueError("allocation: known values must be in [0, 1] (NaN: unknown)")
    return IterationStates(ids, rewards, tokens, known)


def validate(cfg: AllocationConfig) -> None:
    """Raise ValueError naming the first impossible field."""
    if cfg.pilot < 1:
        raise ValueError(f"allocation.pilot must be >= 1, got {cfg.pilot}")
    if cfg.max_rollouts < cfg.pilot:
        raise ValueError(f"allocation.max_rollouts must be >= pilot {cfg.pilot}, got {cfg.max_rollouts}")
    if not cfg.pilot <= cfg.rollouts_per_state <= cfg.max_rollouts:
        raise ValueError(f"allocation.rollouts_per_state must be in [pilot, max_rollouts] = "
                         f"[{cfg.pilot}, {cfg.max_rollouts}], got {cfg.rollouts_per_state}")
    if cfg.child_weight < 0:
        raise ValueError(f"allocation.child_weight must be >= 0, got {cfg.child_weight}")
    pi0, pi1 = cfg.prior_settled
    if not (0 <= pi0 and 0 <= pi1 and pi0 + pi1 < 1):
        raise ValueError(f"allocation.prior_settled must be two probabilities summing below 1, got {cfg.prior_settled}")


def state_depth(ids: np.ndarray, num_states: int) -> np.ndarray:
    """int[U]: the step index of each distinct state (its slot; 0 = prompt). Raises ValueError if a
    state sits at two different slots (ids that do not come from prefixes)."""
    ids = np.asarray(ids)
    slot = np.broadcast_to(np.arange(ids.shape[1])[None], ids.shape)
    valid = ids >= 0
    lo = np.full(num_states, np.iinfo(np.int64).max)
    hi = np.full(num_states, -1)
    np.minimum.at(lo, ids[valid], slot[valid])
    np.maximum.at(hi, ids[valid], slot[valid])
    seen = hi >= 0
    if np.any(lo[seen] != hi[seen]):
        raise ValueError("allocation: a distinct state appears at two different step slots")
    return np.where(seen, hi, 0)


def folds(ids: np.ndarray, num_states: int) -> np.ndarray:
    """int[U] in {0, 1}: step index parity. Neighbouring states are always in different folds."""
    return state_depth(ids, num_states) % 2


def advantage_weights(states: IterationStates) -> np.ndarray:
    """f64[U] w_u = Σ over u's slots (b, i) of T_{b,i−1} + T_{b,i}: the tokens whose advantages
    contain V(s_u) (A_{i−1} and A_i; i = 0 has no A_{−1})."""
    ids, t = states.ids, states.step_tokens
    prev = np.concatenate([np.zeros((len(t), 1)), t[:, :-1]], 1)
    w = np.zeros(len(states.known))
    valid = ids >= 0
    np.add.at(w, ids[valid], (t + prev)[valid])
    return w


def _links(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) int[P]: distinct pairs of consecutive states of some episode."""
    a, c = ids[:, :-1].ravel(), ids[:, 1:].ravel()
    m = (a >= 0) & (c >= 0)
    if not m.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([a[m], c[m]], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def posterior_variance(states: IterationStates, n, s, readable, cfg: AllocationConfig) -> np.ndarray:
    """f64[U] E[p_u (1 − p_u) | evidence] under the module's evidence model; 0 for known states.

    n, s: int[U] round-1 rollouts / successes; readable: bool[U] states whose rollouts may be
    read (never the state itself: pass the other fold). Known states count as read, with their
    value as ``pilot`` draws' success fraction."""
    ids, known = states.ids, states.known
    u = len(known)
    is_known = ~np.isnan(known)
    nn = np.where(is_known, cfg.pilot, np.where(readable, n, 0)).astype(np.float64)
    ss = np.where(is_known, np.nan_to_num(known) * cfg.pilot, np.where(readable, s, 0)).astype(np.float64)
    valid = ids >= 0
    r = np.broadcast_to(states.rewards[:, None], ids.shape)
    k1, k0 = np.zeros(u), np.zeros(u)
    np.add.at(k1, ids[valid], r[valid])
    np.add.at(k0, ids[valid], 1.0 - r[valid])
    prev, nxt = _links(ids)
    np.add.at(k1, prev, cfg.child_weight * ss[nxt])
    np.add.at(k0, prev, cfg.child_weight * (nn[nxt] - ss[nxt]))
    pn, ps = np.zeros(u), np.zeros(u)  # the previous state's round-1 rollouts (one per state)
    pn[nxt], ps[nxt] = nn[prev], ss[prev]
    pi0, pi1 = cfg.prior_settled
    pim = 1.0 - pi0 - pi1
    pk = np.full(u, np.nan)  # the previous state's known value
    pk[nxt] = known[prev]
    rho0 = np.where(np.isnan(pk), np.where((pn > 0) & (ps == 0), pi0 / (pi0 + pim / (pn + 1)), 0.0), pk == 0)
    rho1 = np.where(np.isnan(pk), np.where((pn > 0) & (ps == pn), pi1 / (pi1 + pim / (pn + 1)), 0.0), pk == 1)
    rest = 1.0 - rho0 - rho1
    log_m = np.log(np.maximum(rest * pim, 1e-300)) + betaln(1 + k1, 1 + k0)
    log_0 = np.where(k1 == 0, np.log(np.maximum(rho0 + rest * pi0, 1e-300)), -np.inf)
    log_1 = np.where(k0 == 0, np.log(np.maximum(rho1 + rest * pi1, 1e-300)), -np.inf)
    top = np.maximum(np.maximum(log_0, log_1), log_m)
    p_mixed = np.exp(log_m - top) / (np.exp(log_0 - top) + np.exp(log_1 - top) + np.exp(log_m - top))
    k = k1 + k0
    var = p_mixed * (1 + k1) * (1 + k0) / ((2 + k) * (3 + k))
    return np.where(is_known, 0.0, var)


def pilot_counts(states: IterationStates, cfg: AllocationConfig) -> np.ndarray:
    """int[U] round-1 rollouts: ``pilot`` for every unknown state, 0 for known ones."""
    validate(cfg)
    return np.where(np.isnan(states.known), cfg.pilot, 0).astype(np.int64)


def iteration_budget(states: IterationStates, cfg: AllocationConfig) -> int:
    """Total rollouts of the iteration: round(rollouts_per_state × unknown states)."""
    return int(round(cfg.rollouts_per_state * np.isnan(states.known).sum()))


def greedy_counts(score: np.ndarray, start: np.ndarray, cap: np.ndarray, extra: int) -> np.ndarray:
    """int[U] start + the ``extra`` rollouts of largest gain score_u (1/n − 1/(n + 1)), n < cap_u.

    Gains fall with n, so taking the ``extra`` largest (ties: fewer rollouts first, then lower
    index) is the optimal integer allocation of Σ score_u / n_u. Needs extra <= Σ (cap − start)."""
    room = cap - start
    width = int(room.max(initial=0))
    if extra <= 0 or width == 0:
        return start.copy()
    n = start[:, None] + np.arange(width)[None]                          # [U, W]
    gain = np.where(np.arange(width)[None] < room[:, None], score[:, None] / (n * (n + 1.0)), -1.0)
    row = np.broadcast_to(np.arange(len(start))[:, None], n.shape)
    order = np.lexsort((row.ravel(), n.ravel(), -gain.ravel()))[:extra]  # ties: fewer rollouts, then index
    return start + np.bincount(row.ravel()[order], minlength=len(start))


def fold_budgets(states: IterationStates, fold: np.ndarray, weights: np.ndarray, start: np.ndarray,
                 cap: np.ndarray, total: int, cfg: AllocationConfig) -> np.ndarray:
    """int[F] round-2 rollouts per fold, summing to total − Σ start (within each fold's room):
    shares ∝ Σ sqrt(w_u E[σ_u²]) with the evidence of the rewards alone (the continuous optimum
    n_u ∝ sqrt(w_u σ_u²)), so they depend on no rollout."""
    u = len(start)
    score = weights * posterior_variance(states, np.zeros(u), np.zeros(u), np.zeros(u, bool), cfg)
    room = np.array([(cap - start)[fold == f].sum() for f in (0, 1)])
    want = np.array([np.sqrt(score[fold == f]).sum() for f in (0, 1)]) + 1e-12 * room
    extra = max(total - int(start.sum()), 0)
    out = np.zeros(2, np.int64)
    for _ in range(2):  # a fold that hits its room hands the rest to the other
        left = extra - out.sum()
        open_ = out < room
        if left <= 0 or not open_.any():
            break
        share = np.where(open_, want, 0.0)
        add = np.floor(left * share / share.sum()).astype(np.int64)
        add[np.argmax(share)] += left - add.sum()
        out = np.minimum(out + add, room)
    return out


def allocate(states: IterationStates, pilot_n, pilot_s, cfg: AllocationConfig,
             weights: Optional[np.ndarray] = None) -> np.ndarray:
    """int[U] total rollouts per state (round 1 included) for an iteration budget of
    `iteration_budget` (spent exactly unless every state reaches ``max_rollouts``).

    pilot_n, pilot_s: int[U] round-1 rollouts / successes (`pilot_counts`); weights: f64[U]
    objective weights (default `advantage_weights`; ones: plain value error). Guarantees:
    n_u >= pilot_n[u], n_u <= max(max_rollouts, pilot_n[u]), n_u = 0 for known states, and the
    counts of fold f do not depend on any rollout of fold f (module doc)."""
    validate(cfg)
    pilot_n = np.asarray(pilot_n, np.int64)
    pilot_s = np.asarray(pilot_s, np.int64)
    u = len(states.known)
    if pilot_n.shape != (u,) or pilot_s.shape != (u,):
        raise ValueError(f"allocate: pilot_n and pilot_s must be [{u}], got {pilot_n.shape}, {pilot_s.shape}")
    if np.any((pilot_s < 0) | (pilot_s > pilot_n)):
        raise ValueError("allocate: pilot successes must be in [0, pilot_n]")
    unknown = np.isnan(states.known)
    if np.any(unknown & (pilot_n < 1)):
        raise ValueError("allocate: every unknown state needs at least one round-1 rollout")
    w = advantage_weights(states) if weights is None else np.asarray(weights, np.float64)
    fold = folds(states.ids, u)
    start = np.where(unknown, pilot_n, 0)
    cap = np.where(unknown, np.maximum(cfg.max_rollouts, pilot_n), 0)
    extra = fold_budgets(states, fold, w, start, cap, iteration_budget(states, cfg), cfg)
    n = start.copy()
    for f in (0, 1):
        m = fold == f
        score = w * posterior_variance(states, pilot_n, pilot_s, ~m, cfg)
        n[m] = greedy_counts(score[m], start[m], cap[m], int(extra[f]))
    return n


def values(states: IterationStates, n, s) -> np.ndarray:
    """f32[U] V̂: the known value, else s / n (unbiased: module doc). Raises ValueError for an
    unknown state without rollouts."""
    n = np.asarray(n, np.int64)
    s = np.asarray(s, np.int64)
    unknown = np.isnan(states.known)
    if np.any(unknown & (n < 1)):
        raise ValueError("values: an unknown state has no rollouts")
    if np.any((s < 0) | (s > n)):
        raise ValueError("values: successes must be in [0, n]")
    return np.where(unknown, s / np.maximum(n, 1), np.nan_to_num(states.known)).astype(np.float32)
