"""A budget-global allocation of an iteration's Monte Carlo rollouts, in two decode rounds.

Round 1 (`pilot_counts`): ``pilot`` rollouts from every state whose value is not known (2 where
the episode rewards through it already disagree). Round 2
(`allocate`): the rest of the iteration's budget (`iteration_budget`) goes where it lowers the
error of the advantages most. Then V̂ = `values`.

Objective. A_i = V(s_{i+1}) − V(s_i) weights the T_i tokens of step i, V(s_L) = R is exact and the
states' estimates are independent, so the token-weighted squared advantage error is
    Σ_{b,i} T_{b,i} E(Â_{b,i} − A_{b,i})² = Σ_u w_u σ_u² / n_u,
    w_u = Σ over u's step slots (T_{b,i−1} + T_{b,i})   (`advantage_weights`: V(s_i) enters A_{i−1}
                                                        and A_i, the prompt only A_0),
    σ_u² = p_u (1 − p_u), n_u = rollouts of u. Known values cost nothing (n_u = 0).
σ_u² is replaced by its posterior mean given the state's *evidence* (`evidence_posterior`), and the
budget goes to the largest marginal gains w_u E[σ_u²] (1/n − 1/(n + 1)) (`greedy_counts`: optimal
for this separable convex objective), n_u ≤ ``max_rollouts``.

Evidence, and why V̂ is exactly unbiased. The states are split into two folds by step index parity
(`folds`: a distinct state is a prefix, so its step index is the same in every episode through it,
and its previous and next states are in the other fold). The counts of fold f are a function of
    (a) the episode rewards R (R is one continuation of each state of its episode, so it is
        evidence on p_u; it never enters V̂, which must not depend on the action taken at the
        state: the policy gradient's baseline condition),
    (b) the known values and the structure (ids, tokens), which fix the fold budgets,
    (c) the round-1 rollouts of the *other* fold (a state's previous / next states),
    (d) the round-1 rollouts of fold f's states, but each state's own only through its stop rule:
        a state whose evidence (a)–(c) gives P(settled) >= ``stop_settled`` stops at its pilot
        when the pilot is unanimous; if not, it draws with the others as a surely mixed state.
Fix state u and condition on C_u, everything but u's own rollouts. Without the stop rule n_u is a
function of C_u, so u's rollouts are n_u i.i.d. Bernoulli(p_u) draws and E[s_u / n_u | C_u] = p_u.
Under the stop rule, n_u = pilot when the pilot (m0 draws, j successes) is unanimous, else
m0 + M(C_u): the same M for every mixed j. Given C_u, (n_u, s_u) is then sufficient and
`stop_table`'s f = E[X_1 | n_u, s_u] (X_1 the first rollout) is unbiased since X_1 is: f = s / m0
at a stopped pilot, Σ_j C(m0−1, j−1) C(M, s−j) / Σ_j C(m0, j) C(M, s−j) over mixed j otherwise
(adaptive.py's argument; with m0 = 2 it is 1/2 whatever follows, so the rule needs m0 >= 3).
Either way E[V̂_u | C_u] = p_u for every p, whatever the evidence model: `tests/test_rl_allocation.py`
checks it by enumerating every outcome of a small case. Reading a state's own pilot outside its
stop rule (one fold) biases the plain mean; the test shows that too.

Evidence model (only efficiency depends on it). Prior: a value is exactly 0 w.p. π0, exactly 1
w.p. π1 (settled), else Uniform(0, 1). A settled state's continuations all agree, so do its next
states' and its episodes' rewards, and a state after a settled state is settled the same way.
With k1 / k0 the successes / failures among u's episode rewards and (weight ``child_weight``) its
next states' round-1 rollouts, and ρ_z = P(previous state settled at z | its round-1 rollouts):
    prior_z = ρ_z + (1 − ρ0 − ρ1) π_z,  prior_m = (1 − ρ0 − ρ1)(1 − π0 − π1),
    P(settled at 0) ∝ prior_0 [k1 = 0],  P(settled at 1) ∝ prior_1 [k0 = 0],
    P(mixed) ∝ prior_m B(1 + k1, 1 + k0),  E[σ² | mixed] = (1 + k1)(1 + k0) / ((2 + k)(3 + k)).

Shapes: B episodes, S step slots, U distinct states (ids index them). Budgets count rollouts over
the whole iteration, round 1 included.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import NamedTuple, Optional

import numpy as np


class AllocationConfig(NamedTuple):
    """Rollout allocation settings (config keys `vineppo.allocation.*`, `config.allocation_config`)."""

    pilot: int = 3                   # round-1 rollouts of every state whose value is unknown
    rollouts_per_state: float = 4.5  # iteration budget ÷ unknown states (K = 9 draws 9)
    max_rollouts: int = 32           # per state, pilot included
    stop_settled: float = 0.9        # P(settled | evidence) from which a unanimous pilot stops (> 1: never)
    child_weight: float = 1.0        # evidence weight of one round-1 rollout of a next state
    prior_settled: tuple = (0.3, 0.3)  # π0, π1: prior chance that a value is exactly 0 / 1
    mixed_beta: float = 1.0          # α: an unsettled value is Beta(α, α) a priori


class IterationStates(NamedTuple):
    """What the loop knows of an iteration's distinct states before any MC rollout."""

    ids: np.ndarray          # int[B, S] distinct-state id of each episode's state slot; -1: absent
    rewards: np.ndarray      # f[B] episode rewards R (0/1)
    step_tokens: np.ndarray  # int[B, S] tokens of step i (what A_i weights; `step_token_counts`); 0 past L
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
    state_depth(ids, len(known))  # raises for ids that are not prefixes
    return IterationStates(ids, rewards, tokens, known)


def step_token_counts(step_starts, num_steps, ends) -> np.ndarray:
    """int[B, S] tokens of step i of each episode (what A_i weights): step_starts[b, i + 1] −
    step_starts[b, i], the last step running to ends[b] (the response end); 0 for i >= num_steps[b].

    step_starts: int[B, S] token index where step i starts; num_steps, ends: int[B]."""
    starts = np.asarray(step_starts, np.int64)
    num_steps = np.asarray(num_steps, np.int64)
    slot = np.arange(starts.shape[1])[None]
    nxt = np.concatenate([starts[:, 1:], np.zeros((len(starts), 1), np.int64)], 1)
    nxt = np.where(slot == (num_steps - 1)[:, None], np.asarray(ends, np.int64)[:, None], nxt)
    return np.where(slot < num_steps[:, None], nxt - starts, 0)


def problems(cfg: AllocationConfig) -> list[tuple[str, str]]:
    """(field, why) of every impossible field of ``cfg`` (none: an empty list)."""
    pi0, pi1 = cfg.prior_settled
    checks = [
        (cfg.pilot >= 1, "pilot", "must be >= 1"),
        (cfg.max_rollouts >= cfg.pilot, "max_rollouts", f"must be >= pilot {cfg.pilot}"),
        (cfg.pilot <= cfg.rollouts_per_state <= cfg.max_rollouts, "rollouts_per_state",
         f"must be in [pilot, max_rollouts] = [{cfg.pilot}, {cfg.max_rollouts}]"),
        (cfg.mixed_beta > 0, "mixed_beta", "must be > 0"),
        (cfg.child_weight >= 0, "child_weight", "must be >= 0"),
        (0 <= pi0 and 0 <= pi1 and pi0 + pi1 < 1, "prior_settled", "must be two probabilities summing below 1"),
    ]
    return [(field, why) for ok, field, why in checks if not ok]


def validate(cfg: AllocationConfig) -> None:
    """Raise ValueError naming the first impossible field."""
    for field, why in problems(cfg)[:1]:
        raise ValueError(f"allocation.{field} {why}, got {getattr(cfg, field)}")


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


_LGAMMA = np.vectorize(math.lgamma, otypes=[np.float64])


def _log_beta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _LGAMMA(a) + _LGAMMA(b) - _LGAMMA(a + b)


def _links(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) int[P]: distinct pairs of consecutive states of some episode."""
    a, c = ids[:, :-1].ravel(), ids[:, 1:].ravel()
    m = (a >= 0) & (c >= 0)
    if not m.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([a[m], c[m]], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def evidence_posterior(states: IterationStates, n, s, readable, cfg: AllocationConfig) -> tuple[np.ndarray, np.ndarray]:
    """(P(mixed), E[p (1 − p) | mixed]) f64[U] under the module's evidence model; (0, 0) for
    known states. E[p (1 − p) | evidence] is their product.

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
    a = cfg.mixed_beta
    unan = pim * np.exp(_log_beta(a, a + pn) - _log_beta(a, a))  # P(mixed, n unanimous draws) / P(mixed)
    rho0 = np.where(np.isnan(pk), np.where((pn > 0) & (ps == 0), pi0 / (pi0 + unan), 0.0), pk == 0)
    rho1 = np.where(np.isnan(pk), np.where((pn > 0) & (ps == pn), pi1 / (pi1 + unan), 0.0), pk == 1)
    rest = 1.0 - rho0 - rho1
    with np.errstate(divide="ignore"):  # log 0 = −inf: that case is impossible
        log_m = np.log(rest * pim) + _log_beta(a + k1, a + k0) - _log_beta(a, a)
        log_0 = np.where(k1 == 0, np.log(rho0 + rest * pi0), -np.inf)
        log_1 = np.where(k0 == 0, np.log(rho1 + rest * pi1), -np.inf)
    top = np.maximum(np.maximum(log_0, log_1), log_m)
    top = np.where(np.isfinite(top), top, 0.0)
    e0, e1, em = np.exp(log_0 - top), np.exp(log_1 - top), np.exp(log_m - top)
    # evidence that contradicts every case (a known previous value the rewards disagree with): mixed
    p_mixed = np.where(e0 + e1 + em > 0, em / np.maximum(e0 + e1 + em, 1e-300), 1.0)
    k = k1 + k0
    var = (a + k1) * (a + k0) / ((2 * a + k) * (2 * a + k + 1))
    return np.where(is_known, 0.0, p_mixed), np.where(is_known, 0.0, var)


def pilot_counts(states: IterationStates, cfg: AllocationConfig) -> np.ndarray:
    """int[U] round-1 rollouts: ``pilot`` for every unknown state, 0 for known ones, and at most 2
    where the episode rewards already disagree (the state is surely mixed, so no stop rule can
    use a third pilot rollout; it draws on in round 2 anyway)."""
    validate(cfg)
    u = len(states.known)
    p_mixed, _ = evidence_posterior(states, np.zeros(u), np.zeros(u), np.zeros(u, bool), cfg)
    pilot = np.where(p_mixed >= 1.0, min(cfg.pilot, 2), cfg.pilot)
    return np.where(np.isnan(states.known), pilot, 0).astype(np.int64)


def iteration_budget(states: IterationStates, cfg: AllocationConfig) -> int:
    """Total rollouts of the iteration: round(rollouts_per_state × unknown states)."""
    return int(round(cfg.rollouts_per_state * np.isnan(states.known).sum()))


def greedy_counts(score: np.ndarray, start: np.ndarray, cap: np.ndarray, extra: int) -> np.ndarray:
    """int[U] start + the ``extra`` rollouts of largest gain score_u (1/n − 1/(n + 1)), n < cap_u.

    Gains fall with n, so taking the ``extra`` largest (ties: fewer rollouts first, then lower
    index) is the optimal integer allocation of Σ score_u / n_u; all of the room when extra
    exceeds it."""
    room = cap - start
    width = int(room.max(initial=0))
    if extra <= 0 or width == 0:
        return start.copy()
    n = start[:, None] + np.arange(width)[None]                          # [U, W] count before the draw
    ok = np.arange(width)[None] < room[:, None]
    row = np.broadcast_to(np.arange(len(start))[:, None], n.shape)[ok]
    n = n[ok]
    gain = score[row] / (n * (n + 1.0))
    order = np.lexsort((row, n, -gain))[:extra]  # ties: fewer rollouts, then index
    return start + np.bincount(row[order], minlength=len(start))


def fold_budgets(states: IterationStates, fold: np.ndarray, weights: np.ndarray, start: np.ndarray,
                 cap: np.ndarray, total: int, cfg: AllocationConfig) -> np.ndarray:
    """int[F] round-2 rollouts per fold, summing to total − Σ start (within each fold's room):
    shares ∝ Σ sqrt(w_u E[σ_u²]) with the evidence of the rewards alone (the continuous optimum
    n_u ∝ sqrt(w_u σ_u²)), so they depend on no rollout."""
    u = len(start)
    score = weights * np.prod(evidence_posterior(states, np.zeros(u), np.zeros(u), np.zeros(u, bool), cfg), axis=0)
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


class Allocation(NamedTuple):
    """Round-2 outcome: n int[U] total rollouts (round 1 included), pilot int[U] round-1
    rollouts, stop_rule bool[U] states under "stop when the pilot is unanimous" (`values`)."""

    n: np.ndarray
    pilot: np.ndarray
    stop_rule: np.ndarray


def allocate(states: IterationStates, pilot_n, pilot_s, cfg: AllocationConfig,
             weights: Optional[np.ndarray] = None) -> Allocation:
    """Round 2: total rollouts per state for an iteration budget of `iteration_budget` (spent
    exactly unless every state still drawing reaches ``max_rollouts``).

    pilot_n, pilot_s: int[U] round-1 rollouts / successes (`pilot_counts`); weights: f64[U]
    objective weights (default `advantage_weights`; ones: plain value error). A state whose
    evidence (other fold, rewards) gives P(settled) >= ``stop_settled`` and whose pilot has >= 3
    rollouts is under the stop rule: it stops at its pilot when the pilot is unanimous, else it
    joins the others (surely mixed). Guarantees: pilot_n[u] <= n_u <= max(max_rollouts,
    pilot_n[u]), n_u = 0 for known states, and the counts of fold f depend on fold f's own
    rollouts only through each state's own stop rule (module doc)."""
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
    rule = np.zeros(u, bool)
    unanimous = (pilot_s == 0) | (pilot_s == pilot_n)
    for f in (0, 1):
        m = fold == f
        p_mixed, var = evidence_posterior(states, pilot_n, pilot_s, ~m, cfg)
        rule[m] = (unknown & (pilot_n >= 3) & (1.0 - p_mixed >= cfg.stop_settled))[m]
        score = w * np.where(rule, var, p_mixed * var)  # under the rule, a state still drawing is mixed
        room = np.where(rule & unanimous, start, cap)
        n[m] = greedy_counts(score[m], start[m], room[m], int(extra[f]))
    return Allocation(n, start, rule)


@functools.lru_cache(maxsize=256)
def stop_table(pilot: int, more: int) -> np.ndarray:
    """f64[pilot + more + 1] unbiased V̂ of a state that drew ``more`` after a mixed pilot of
    ``pilot`` (rule: stop when the pilot is unanimous), indexed by total successes:
        f(s) = Σ_{j=1}^{pilot−1} C(pilot−1, j−1) C(more, s−j) / Σ_{j=1}^{pilot−1} C(pilot, j) C(more, s−j)
    = E[X_1 | pilot mixed, S = s]; NaN where no mixed pilot reaches s. ``more`` = 0: s / pilot."""
    total = pilot + more
    out = np.full(total + 1, np.nan)
    for k in range(total + 1):
        if more == 0:
            out[k] = k / pilot
            continue
        num = sum(math.comb(pilot - 1, j - 1) * math.comb(more, k - j) for j in range(1, pilot) if 0 <= k - j <= more)
        den = sum(math.comb(pilot, j) * math.comb(more, k - j) for j in range(1, pilot) if 0 <= k - j <= more)
        if den:
            out[k] = float(Fraction(num, den))
    out.setflags(write=False)
    return out


def values(states: IterationStates, alloc: Allocation, s) -> np.ndarray:
    """f32[U] V̂: the known value; for a state under the stop rule that drew past its pilot,
    `stop_table`; else s / n. Unbiased (module doc). Raises ValueError for an unknown state
    without rollouts or an (n, s) its rule cannot produce."""
    n = np.asarray(alloc.n, np.int64)
    s = np.asarray(s, np.int64)
    unknown = np.isnan(states.known)
    if np.any(unknown & (n < 1)):
        raise ValueError("values: an unknown state has no rollouts")
    if np.any((s < 0) | (s > n)):
        raise ValueError("values: successes must be in [0, n]")
    out = np.where(unknown, s / np.maximum(n, 1), np.nan_to_num(states.known))
    for i in np.nonzero(unknown & alloc.stop_rule & (n > alloc.pilot))[0]:
        out[i] = stop_table(int(alloc.pilot[i]), int(n[i] - alloc.pilot[i]))[s[i]]
    if np.isnan(out).any():
        raise ValueError("values: a state under the stop rule has successes no mixed pilot can give")
    return out.astype(np.float32)
