"""LoRA runs end to end on a tiny model and the arithmetic task: SFT with LoRA, then VinePPO with
LoRA from its export (chaining). The base stays bit-identical and is the KL reference itself (no
copy, adapters off); checkpoints hold the adapters and their optimizer state only; a run killed
mid-way resumes bit-identically (LoRA dropout included); the exports are a merged HF folder and a
PEFT adapter folder that `peft.PeftModel` loads with the same logits; a checkpoint restores as the
policy it was."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from safetensors.numpy import load_file
from test_train_loop import reward_odd_length, run_killed_after, tiny_config

from tests import helpers_hf
from vinejax.model import forward, load_hf_model, lora
from vinejax.tasks import arithmetic
from vinejax.train import loop
from vinejax.train.context import build_context
from vinejax.train.metrics import read_metrics
from vinejax.train.run_policy import load_run_policy

LORA = {"model.lora.rank": 4, "model.lora.alpha": 8.0}


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def checkpoint_arrays(run_dir: str, step: int) -> dict:
    """{path: (shape, dtype)} of every array a checkpoint holds (its metadata, nothing restored)."""
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(run_dir) / "checkpoints" / str(step) / "state").tree
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): (tuple(m.shape), np.dtype(m.dtype)) for p, m in flat}


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory):
    """A short SFT stage with LoRA: its export is the merged policy the RL runs start from."""
    cfg = tiny_config(tmp_path_factory.mktemp("sft"), "sft", **LORA, **{
        "sft.max_steps": 3, "sft.batch_size": 16, "sft.micro_batch": 8, "optim.lr": 1e-2})
    loop.run(cfg)
    return cfg


def test_sft_with_lora_exports_a_merged_policy_and_its_adapters(sft_lora):
    _, random_init = build_context(tiny_config(None, "sft", **{"output_dir": sft_lora.output_dir + "_x"}))[:2]
    _, merged = load_hf_model(os.path.join(sft_lora.output_dir, "hf"))
    moved = [float(np.abs(a - b).max()) for a, b in zip(leaves(random_init["layers"]), leaves(merged["layers"]))]
    assert max(moved) > 1e-3  # the adapters trained and are merged into the export
    assert np.array_equal(np.asarray(random_init["embed"]), np.asarray(merged["embed"]))  # not adapted: untouched
    assert sorted(os.listdir(os.path.join(sft_lora.output_dir, "adapter"))) == ["adapter_config.json",
                                                                                "adapter_model.safetensors"]


def test_lora_vineppo_trains_adapters_on_the_frozen_base_and_resumes_bit_identically(sft_lora, tmp_path, monkeypatch):
    import peft

    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    rl = lambda name: tiny_config(tmp_path / name, iterations=3, **LORA, **{
        "model.init_from": sft_lora.output_dir, "model.lora.dropout": 0.1, "sampling.samples_per_problem": 4,
        "ppo.episodes_per_step": 16, "optim.lr": 3e-2})
    references = []
    real_iteration = loop.rl_iteration

    def spy(ctx, state, ref_params, *args):
        references.append(ref_params)
        return real_iteration(ctx, state, ref_params, *args)

    monkeypatch.setattr(loop, "rl_iteration", spy)
    straight = rl("a")
    loop.run(straight)

    # the KL reference is the starting policy with adapters off, the same arrays every iteration
    # (never copied), and training left it bit-identical: only the adapters trained
    _, sft_policy = load_hf_model(os.path.join(sft_lora.output_dir, "hf"))
    assert len(references) == 3 and all(r is references[0] for r in references)
    assert "lora" not in references[0]["layers"]
    for a, b in zip(leaves(references[0]), leaves(sft_policy)):
        np.testing.assert_array_equal(a, b)
    kl = [r["rollout/kl_k1"] for r in read_metrics(os.path.join(straight.output_dir, "metrics.jsonl"))]
    assert kl[0] == 0.0 and any(k != 0.0 for k in kl[1:])  # fresh adapters are the base exactly; then they move

    # checkpoints hold the adapters and their Adam moments, nothing of the base
    arrays = checkpoint_arrays(straight.output_dir, 3)
    adapters = jax.tree.leaves(lora.adapter_shapes(_model_cfg(straight)))
    adapter_bytes = sum(np.prod(s.shape) * 4 for s in adapters)
    held = sum(np.prod(s) * d.itemsize for s, d in arrays.values())
    assert {s for s, _ in arrays.values() if len(s) > 1} == {s.shape for s in adapters}
    assert 3 * adapter_bytes <= held <= 3 * adapter_bytes + 64  # adapters, Adam's mu and nu, a few scalars
    assert held < sum(a.nbytes for a in leaves(sft_policy))

    # a run killed after iteration 2 resumes to the same adapters, bit for bit (dropout masks included)
    resumed = rl("b")
    run_killed_after(monkeypatch, resumed, 2)
    loop.run(resumed)
    adapter_file = lambda cfg: load_file(os.path.join(cfg.output_dir, "adapter", "adapter_model.safetensors"))
    a, b = adapter_file(straight), adapter_file(resumed)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(np.abs(v).max() > 0 for k, v in a.items() if "lora_B" in k)

    # the exports: the merged folder and the PEFT folder on the starting model give the same logits
    tokens = helpers_hf.random_tokens(2, 10, vocab=sft_policy["embed"].shape[0])
    merged = helpers_hf.torch_logits(helpers_hf.load_torch(os.path.join(straight.output_dir, "hf")), tokens)
    on_base = peft.PeftModel.from_pretrained(helpers_hf.load_torch(os.path.join(sft_lora.output_dir, "hf")),
                                             os.path.join(straight.output_dir, "adapter")).eval()
    np.testing.assert_allclose(helpers_hf.torch_logits(on_base, tokens), merged, atol=1e-4, rtol=0)

    # a checkpoint restores as the policy: the base with its adapters
    ctx, policy, meta = load_run_policy(straight.output_dir, 3)
    assert meta["progress"]["position"] == 3 and lora.adapters_of(policy) is not None
    ours = jax.jit(forward, static_argnums=1)(policy, ctx.model_cfg, jnp.asarray(tokens))[0]
    np.testing.assert_allclose(np.asarray(ours), merged, atol=1e-4, rtol=0)


def _model_cfg(cfg):
    ctx, _, _ = build_context(cfg, load_params=False)
    return ctx.model_cfg
