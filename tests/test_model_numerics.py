"""remat equivalence and bf16 compute on a loaded tiny checkpoint."""
import helpers_hf as H
import jax
import jax.numpy as jnp
import numpy as np

from vinejax.model import forward, load_hf_model


def _loss(params, cfg, tokens):
    logits, _ = forward(params, cfg, tokens)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


def test_remat_same_logits_and_grads():
    cfg, params = load_hf_model(H.cached_tiny("llama_gqa"))
    tokens = H.random_tokens(2, 12, seed=6)
    vg = jax.jit(jax.value_and_grad(_loss), static_argnums=1)
    loss, grads = vg(params, cfg, tokens)
    loss_r, grads_r = vg(params, cfg.replace(remat=True), tokens)
    np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads_r, grads)
    assert float(jnp.abs(grads["layers"]["wq"]).max()) > 0


def test_bf16_compute_close_to_fp32():
    path = H.cached_tiny("llama_gqa")
    cfg, params = load_hf_model(path)
    cfg16, params16 = load_hf_model(path, dtype="bfloat16", param_dtype="bfloat16")
    assert params16["layers"]["w_up"].dtype == jnp.bfloat16
    tokens = H.random_tokens(2, 12, seed=7)
    fwd = jax.jit(forward, static_argnums=1)
    ref, _ = fwd(params, cfg, tokens)
    out, hidden = fwd(params16, cfg16, tokens)
    assert out.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
    ref, out = np.asarray(ref), np.asarray(out)
    assert np.isfinite(out).all()
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() < 0.05 * scale, (np.abs(out - ref).max(), scale)
    # bf16 greedy next-token choices mostly agree with fp32.
    assert (out.argmax(-1) == ref.argmax(-1)).mean() > 0.8
