"""LoRA in the decoder (`vinejax.model.lora`): for every family, the adapted model's logits are
those of `peft.PeftModel` on the transformers model (the adapters written as a PEFT folder and
loaded by PEFT), the merged HF export is the same model for transformers, and decoding with the
adapters merged into the decode weights reproduces them; plus the config's one-line errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers_hf
from vinejax.config import ConfigError, base_config, validate
from vinejax.model import decode, forward, forward_cached, init_cache, llama, load_hf_model, lora, save_hf_model
from vinejax.model.config import LoraConfig
from vinejax.model.hf import save_peft_adapter

FAMILIES = ["llama_gqa", "mistral_window", "qwen2_tied", "qwen3_window", "gemma2", "gemma3", "olmo2", "phi3",
            "smollm3"]  # one variant of every supported model_type (helpers_hf.VARIANTS)


def random_adapters(cfg, seed=0, scale=0.1):
    """Adapters as `init_adapters` makes them, with B random too (a trained adapter, not the identity)."""
    fresh = lora.init_adapters(cfg, jax.random.key(seed))
    noise = lambda x, i: x + scale * jax.random.normal(jax.random.key(seed * 100 + i), x.shape)
    leaves, tree = jax.tree.flatten(fresh)
    return jax.tree.unflatten(tree, [noise(x, i) for i, x in enumerate(leaves)])


@pytest.mark.parametrize("variant", FAMILIES)
def test_adapted_logits_match_peft_and_the_merged_export(tmp_path, variant):
    import peft

    path = helpers_hf.cached_tiny(variant)
    cfg, base = load_hf_model(path)
    targets = ("q", "v", "down") if variant == "phi3" else tuple(LoraConfig(1, 1.0).targets)  # phi3: part of a fused module
    cfg = cfg.replace(lora=LoraConfig(rank=4, alpha=6.0, targets=targets))
    adapters = random_adapters(cfg)
    tokens = helpers_hf.random_tokens(2, 12, seed=1)
    ours = np.asarray(jax.jit(forward, static_argnums=1)(lora.attach(base, adapters), cfg, jnp.asarray(tokens))[0])

    save_peft_adapter(adapters, cfg, tmp_path / "adapter", base_model=str(path))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(path) and config["r"] == 4 and config["lora_alpha"] == 6.0
    model = peft.PeftModel.from_pretrained(helpers_hf.load_torch(path), str(tmp_path / "adapter")).eval()
    with_peft = helpers_hf.torch_logits(model, tokens)
    np.testing.assert_allclose(ours, with_peft, atol=1e-4, rtol=0)
    assert np.abs(with_peft - helpers_hf.torch_logits(helpers_hf.load_torch(path), tokens)).max() > 1e-2  # adapters matter

    save_hf_model(lora.attach(base, adapters), cfg, tmp_path / "merged")  # the family's own folder, adapters merged
    merged = helpers_hf.torch_logits(helpers_hf.load_torch(tmp_path / "merged"), tokens)
    np.testing.assert_allclose(merged, with_peft, atol=1e-4, rtol=0)


def test_phi3_fused_modules_get_block_rank():
    cfg, _ = load_hf_model(helpers_hf.cached_tiny("phi3"))
    cfg = cfg.replace(lora=LoraConfig(rank=3, alpha=6.0, targets=("q", "k", "v", "up")))
    from vinejax.model.hf import peft_modules, peft_tensors

    assert peft_modules(cfg) == {"self_attn.qkv_proj": ["wq", "wk", "wv"], "mlp.gate_up_proj": ["w_up"]}
    host = jax.tree.map(np.asarray, random_adapters(cfg))
    t = peft_tensors(cfg, host)
    a, b = t["base_model.model.model.layers.1.self_attn.qkv_proj.lora_A.weight"], \
        t["base_model.model.model.layers.1.self_attn.qkv_proj.lora_B.weight"]
    q_rows = cfg.num_heads * cfg.head_dim
    assert a.shape == (9, cfg.hidden_size) and b.shape == (q_rows + 2 * cfg.num_kv_heads * cfg.head_dim, 9)
    assert not b[:q_rows, 3:].any() and not b[q_rows:, :3].any()  # q's rows use q's rank only
    up = t["base_model.model.model.layers.0.mlp.gate_up_proj.lora_B.weight"]
    assert up.shape == (2 * cfg.intermediate_size, 3) and not up[:cfg.intermediate_size].any()  # gate not adapted


def test_decoding_with_merged_weights_matches_the_unmerged_forward():
    path = helpers_hf.cached_tiny("qwen2_tied")  # q/k/v biases, GQA, tied head
    cfg, base = load_hf_model(path)
    cfg = cfg.replace(lora=LoraConfig(rank=2, alpha=4.0))
    params = lora.attach(base, random_adapters(cfg, seed=2))
    tokens = jnp.asarray(helpers_hf.random_tokens(2, 9, seed=4))
    full = np.asarray(jax.jit(forward, static_argnums=1)(params, cfg, tokens)[0])  # x·W + s·(x·A)·B in every layer
    _, _, cache = jax.jit(forward_cached, static_argnums=1)(params, cfg, tokens[:, :5], init_cache(cfg, 2, 12))
    weights = jax.jit(decode.decode_weights, static_argnums=1)(params, cfg)  # W + s·A·B, once
    caches, step = decode.decode_caches(cache), jax.jit(decode.decode_step, static_argnums=2)
    for i in range(5, 9):
        logits, caches = step(params, weights, cfg, tokens[:, i], caches)
        np.testing.assert_allclose(np.asarray(logits), full[:, i], atol=2e-5, rtol=0)
    unadapted = jax.jit(decode.decode_weights, static_argnums=1)(base, cfg)
    assert np.abs(np.asarray(weights.layers[0]["wqkv"]) - np.asarray(unadapted.layers[0]["wqkv"])).max() > 1e-3


def test_adapters_start_as_the_base_and_merge_exactly():
    cfg = llama.ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=4, lora=LoraConfig(rank=3, alpha=3.0, targets=("o", "gate")))
    base = llama.init_params(cfg, jax.random.key(0))
    fresh = lora.init_adapters(cfg, jax.random.key(1))
    assert set(fresh) == {"wo", "w_gate"} and fresh["wo"]["a"].shape == (2, 4, 4, 3) and fresh["wo"]["b"].shape == (2, 3, 16)
    bound = 1 / np.sqrt(4 * 4)  # PEFT's kaiming-uniform bound for o_proj's fan-in H·Dh
    assert 0.8 * bound < np.abs(np.asarray(fresh["wo"]["a"])).max() <= bound and not np.asarray(fresh["wo"]["b"]).any()
    tokens = jnp.asarray(np.arange(10).reshape(2, 5) % 32)
    np.testing.assert_array_equal(forward(lora.attach(base, fresh), cfg, tokens)[0], forward(base, cfg, tokens)[0])
    trained = random_adapters(cfg, seed=3)
    merged = lora.merge(cfg, lora.attach(base, trained))
    assert "lora" not in merged["layers"]
    a, b = np.asarray(trained["wo"]["a"][1]).reshape(16, 3), np.asarray(trained["wo"]["b"][1])
    np.testing.assert_allclose(np.asarray(merged["layers"]["wo"][1]).reshape(16, 16),
                               np.asarray(base["layers"]["wo"][1]).reshape(16, 16) + 1.0 * a @ b, atol=1e-6)
    np.testing.assert_allclose(forward(merged, cfg, tokens)[0], forward(lora.attach(base, trained), cfg, tokens)[0],
                               atol=1e-5)


@pytest.mark.parametrize("key, value, message", [
    ("rank", -1, "'model.lora.rank': must be >= 0"),
    ("alpha", 0.0, "'model.lora.alpha': must be > 0"),
    ("dropout", 1.0, "'model.lora.dropout': must be in [0, 1)"),
    ("target", ("q", "qkv"), "'model.lora.target': must name distinct projections among q, k, v, o, gate, up, down"),
    ("target", (), "'model.lora.target'"),
])
def test_bad_lora_settings_name_their_key(key, value, message):
    c = base_config()
    c.model.lora[key] = value
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        validate(c)


@pytest.mark.parametrize("algo, message", [("ppo", "trains a critic"), ("restem", "fine-tunes whole models")])
def test_lora_refuses_stages_that_train_whole_models(algo, message):
    c = base_config()
    c.algo, c.model.lora.rank = algo, 8
    with pytest.raises(ConfigError, match=f"'model.lora.rank': .*{message}"):
        validate(c)
