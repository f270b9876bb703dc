"""vinejax logits vs HF PyTorch (fp32) on tiny random checkpoints of every supported family
(`helpers_hf.VARIANTS`), and exports that transformers loads back with the same logits."""
import functools

import helpers_hf as H
import jax
import numpy as np
import pytest

from vinejax import model as M
from vinejax.tools.compare_hf import padded_batch

TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _jit_forward():
    return jax.jit(M.forward, static_argnums=1)


def _forward(params, cfg, tokens, positions=None, segment_ids=None):
    logits, _ = _jit_forward()(params, cfg, tokens, positions, segment_ids)
    return np.asarray(logits)


@pytest.mark.parametrize("variant", sorted(H.VARIANTS))
def test_logits_match_hf_with_padding(variant):
    path = H.cached_tiny(variant)
    cfg, params = M.load_hf_model(path)
    hf = H.load_torch(path)
    tokens, mask, positions = padded_batch(3, 20, H.VOCAB, seed=1)
    ref = H.torch_logits(hf, tokens, mask, positions)
    ours = _forward(params, cfg, tokens, positions, mask)
    real = mask.astype(bool)
    diff = np.abs(ours[real] - ref[real]).max()
    assert diff <= TOL, f"{variant}: max abs logit diff {diff}"


def test_left_and_right_padding_match_unpadded():
    cfg, params = M.load_hf_model(H.cached_tiny("llama_gqa"))
    row = H.random_tokens(1, 11, seed=2)
    alone = _forward(params, cfg, row)[0]
    tokens = np.zeros((2, 16), np.int32)
    mask = np.zeros((2, 16), np.int32)
    tokens[0, 5:], mask[0, 5:] = row[0], 1  # left-padded
    tokens[1, :11], mask[1, :11] = row[0], 1  # right-padded
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    out = _forward(params, cfg, tokens, positions, mask)
    np.testing.assert_allclose(out[0, 5:], alone, atol=TOL, rtol=0)
    np.testing.assert_allclose(out[1, :11], alone, atol=TOL, rtol=0)


def test_config_fields_read_from_checkpoint():
    cfg, params = M.load_hf_model(H.cached_tiny("llama3_rope"))
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 1, 16)
    assert cfg.rope_scaling_dict["rope_type"] == "llama3" and cfg.rope_theta == 500000.0
    cfg, params = M.load_hf_model(H.cached_tiny("qwen2_tied"))
    assert cfg.tie_word_embeddings and cfg.attention_bias and "lm_head" not in params
    assert params["layers"]["bq"].shape == (H.LAYERS, 4, 16)
    cfg, params = M.load_hf_model(H.cached_tiny("qwen2_untied"))
    assert not cfg.tie_word_embeddings and params["lm_head"].shape == (H.HIDDEN, H.VOCAB)


def test_cached_decode_equals_full_forward():
    cfg, params = M.load_hf_model(H.cached_tiny("qwen2_tied"))  # GQA + q/k/v biases + tied head
    tokens = H.random_tokens(2, 14, seed=3)
    full = _forward(params, cfg, tokens)
    prompt_lens = np.array([5, 8], np.int32)
    prompt = np.where(np.arange(8)[None] < prompt_lens[:, None], tokens[:, :8], 0)
    step = jax.jit(M.forward_cached, static_argnums=1)
    cache = M.init_cache(cfg, 2, 16)
    logits, _, cache = step(params, cfg, prompt, cache, prompt_lens)
    for b in range(2):
        n = prompt_lens[b]
        np.testing.assert_allclose(np.asarray(logits)[b, :n], full[b, :n], atol=TOL, rtol=0)
    for _ in range(5):
        lens = np.asarray(cache.lengths)
        nxt = tokens[np.arange(2), lens][:, None]
        logits, _, cache = step(params, cfg, nxt, cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(2), lens], atol=TOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.lengths), prompt_lens + 5)


def test_sharded_safetensors_folder_loads(tmp_path):
    path = H.save_tiny(tmp_path, "llama_gqa", max_shard_size="40KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    cfg, params = M.load_hf_model(path)
    ref_cfg, ref_params = M.load_hf_model(H.cached_tiny("llama_gqa"))
    assert cfg == ref_cfg
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)


@pytest.mark.parametrize("variant,shard", [("qwen2_tied", None), ("mistral_gqa", "40KB"), ("phi3", "40KB")]
                         + [(v, None) for v in sorted(H.FAMILY_VARIANTS) if v != "phi3"])
def test_export_reloads_in_transformers(tmp_path, variant, shard):
    src = H.cached_tiny(variant)
    cfg, params = M.load_hf_model(src)
    out = M.save_hf_model(params, cfg, tmp_path / "export", **({"max_shard_size": shard} if shard else {}))
    assert (out / "model.safetensors.index.json").is_file() == (shard is not None)
    tokens = H.random_tokens(2, 12, seed=4)
    ref = H.torch_logits(H.load_torch(src), tokens)
    reloaded = H.load_torch(out)
    assert type(reloaded).__name__ == type(H.load_torch(src)).__name__
    np.testing.assert_allclose(H.torch_logits(reloaded, tokens), ref, atol=TOL, rtol=0)
    cfg2, params2 = M.load_hf_model(out)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_bf16_checkpoint_roundtrip(tmp_path):
    cfg, params = M.load_hf_model(H.cached_tiny("llama_gqa"))
    out = M.save_hf_model(params, cfg, tmp_path / "bf16", dtype="bfloat16")
    cfg16, params16 = M.load_hf_model(out)
    assert cfg16.param_dtype == "bfloat16" and cfg16.dtype == "bfloat16"
    assert params16["layers"]["wq"].dtype == jax.numpy.bfloat16
    cfg32, params32 = M.load_hf_model(out, dtype="float32", param_dtype="float32")
    assert params32["embed"].dtype == np.float32
    np.testing.assert_allclose(np.asarray(params32["embed"]), np.asarray(params["embed"]), rtol=1e-2, atol=1e-2)
    # transformers reads the bf16 folder too.
    tokens = H.random_tokens(1, 11)  # same shape as the padding test: reuses its compiled forward
    hf_logits = H.torch_logits(H.load_torch(out), tokens)
    ours = _forward(params32, cfg32, tokens)
    np.testing.assert_allclose(ours, hf_logits, atol=TOL, rtol=0)


def test_value_head_exported_separately(tmp_path):
    cfg, params = M.load_hf_model(H.cached_tiny("llama_gqa"), value_head=True)
    assert params["value_head"]["w"].shape == (H.HIDDEN,)
    params["value_head"]["b"] = params["value_head"]["b"] + 0.5
    out = M.save_hf_model(params, cfg, tmp_path / "vh")
    assert (out / "value_head.safetensors").is_file()
    _, again = M.load_hf_model(out, value_head=True)
    np.testing.assert_allclose(np.asarray(again["value_head"]["b"]), np.asarray(params["value_head"]["b"]))
    _, plain = M.load_hf_model(out)
    assert "value_head" not in plain
