"""Token log-probabilities and entropies from logits, aligned with the tokens.

Convention: ``logprobs[b, t] = log p(tokens[b, t] | tokens[b, :t])`` where p is the softmax of
``logits / temperature``; ``logits[b, t]`` is the model output at column t (predicting t + 1).
Column 0 has no prediction and is set to 0 (it is always masked). So

    logprobs[:, 1:] = (z[:, :-1] gathered at tokens[:, 1:]) − logsumexp(z[:, :-1]),  z = logits / τ
    entropy[:, 1:]  = log s − Σ_v e^{z'_v} z'_v / s,   z' = z − max z, s = Σ_v e^{z'_v}
                      (entropy of the predicting row, in the shift-invariant form: the float32
                      error of ``logsumexp(z) − Σ softmax(z)·z`` grows with |z|, this one does not)

``vocab_chunk`` streams the vocabulary in chunks with an online log-sum-exp (running max m,
s = Σ e^{z−m}, u = Σ e^{z−m} (z − m), rescaled when m grows), so a float32 copy of the full
``[B, T, V]`` logits is never formed (useful for 100k vocabularies with bf16 logits); the chunk
body is rematerialised in the backward pass.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _gather_token_logit(x: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """x: [B, T, V] logits, tokens: [B, T] targets -> f32[B, T] of z = x / τ at the target."""
    g = jnp.take_along_axis(x, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return g.astype(jnp.float32) / temperature


def _full_stats(x: jax.Array, temperature: float, with_entropy: bool):
    z = x.astype(jnp.float32) / temperature                                 # [B, T, V]
    lse = jax.nn.logsumexp(z, axis=-1)                                       # [B, T]
    if not with_entropy:
        return lse, None
    shifted = z - jax.lax.stop_gradient(z.max(-1, keepdims=True))            # [B, T, V] z' <= 0
    e = jnp.exp(shifted)
    s = e.sum(-1)                                                            # [B, T] >= 1
    return lse, jnp.log(s) - (e * shifted).sum(-1) / s


def _chunked_stats(x: jax.Array, temperature: float, chunk: int, with_entropy: bool):
    V = x.shape[-1]
    chunk = min(chunk, V)
    n_chunks = -(-V // chunk)
    lead = x.shape[:-1]

    @jax.checkpoint
    def body(carry, i):
        m, s, u = carry                                                      # [B, T] each
        start = jnp.minimum(i * chunk, V - chunk)       # last chunk is shifted back, not padded
        xc = jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=-1)
        col = start + jnp.arange(chunk)
        valid = col >= i * chunk                        # drop columns already seen
        zf = jnp.where(valid, xc.astype(jnp.float32) / temperature, 0.0)      # [B, T, c]
        zc = jnp.where(valid, zf, -jnp.inf)
        m_new = jnp.maximum(m, zc.max(-1))
        scale = jnp.exp(m - m_new)
        e = jnp.exp(zc - m_new[..., None])
        if with_entropy:  # u = Σ e^{z−m}(z − m): re-centred on the new max (0 before any column)
            moved = jnp.where(s > 0, (m - m_new) * s, 0.0)
            u = scale * (u + moved) + (e * (zf - m_new[..., None])).sum(-1)  # e = 0 off-range
        s = s * scale + e.sum(-1)
        return (m_new, s, u), None

    init = (jnp.full(lead, -jnp.inf, jnp.float32), jnp.zeros(lead, jnp.float32),
            jnp.zeros(lead, jnp.float32))
    (m, s, u), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    lse = m + jnp.log(s)
    return lse, (jnp.log(s) - u / s) if with_entropy else None


def _aligned(x: jax.Array) -> jax.Array:
    """Per-column stats of the predicting rows [B, T] -> aligned [B, T]: shift right, column 0 = 0.

    Stats are computed on all T rows of the logits (the last row's value is dropped) so that the
    ``[B, T, V]`` logits are never sliced (a slice would copy them).
    """
    return jnp.pad(x[:, :-1], ((0, 0), (1, 0)))


def _next_tokens(tokens: jax.Array) -> jax.Array:
    """int32[B, T]: target of row t is tokens[:, t + 1] (last column: dummy 0, dropped later)."""
    return jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))


def _stats(logits, temperature, vocab_chunk, with_entropy):
    if vocab_chunk is None:
        return _full_stats(logits, temperature, with_entropy)
    return _chunked_stats(logits, temperature, vocab_chunk, with_entropy)


def token_logprobs_and_entropy(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0,
                               vocab_chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Log-probs of ``tokens`` and entropies, both f32[B, T] aligned with tokens (column 0 = 0).

    Args:
      logits: [B, T, V] any float dtype (model output over ``tokens``).
      tokens: int32[B, T].
      temperature: logits are divided by it (paper: the sampling temperature, 0.6).
      vocab_chunk: if set, stream the vocabulary in chunks of this size.
    """
    lse, ent = _stats(logits, temperature, vocab_chunk, True)                # [B, T] each
    lp = _gather_token_logit(logits, _next_tokens(tokens), temperature) - lse
    return _aligned(lp), _aligned(ent)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0,
                   vocab_chunk: int | None = None) -> jax.Array:
    """f32[B, T] log-probs of ``tokens`` under ``softmax(logits / temperature)``, column 0 = 0."""
    lse, _ = _stats(logits, temperature, vocab_chunk, False)
    return _aligned(_gather_token_logit(logits, _next_tokens(tokens), temperature) - lse)
