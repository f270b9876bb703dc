"""The memory planner's state of a LoRA run, against sizes re-derived from the published model
shape: the frozen bf16 base sharded like the policy (its norms replicated), float32 adapters and Adam moments of the
adapters only, all sharded over the 8 devices, and no reference copy."""
import pathlib

import jax
import numpy as np

from vinejax import sharding
from vinejax.config_file import load_config_file
from vinejax.model import lora
from vinejax.planning import phases, shapes
from vinejax.train.context import planning_context

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_of(config: str):
    cfg = load_config_file(str(ROOT / "configs" / config))
    model_cfg, _ = shapes.model_config_of(cfg)
    return planning_context(cfg, model_cfg, sharding.make_mesh((1, 8, 1), devices=jax.devices()[:8]))


def test_lora_state_is_the_bf16_base_and_float32_adapters_with_their_adam_moments():
    lora_run, full_run = run_of("gsm8k_deepseek7b_vineppo_lora.py"), run_of("gsm8k_deepseek7b_vineppo.py")
    state, full = phases.state_trees(lora_run), phases.state_trees(full_run)
    assert "ref_params" not in state and "ref_params" in full  # the KL reference is the base itself
    base, adapters = lora.base_of(state["params"]), lora.adapters_of(state["params"])
    assert {x.dtype for x in jax.tree.leaves(base)} == {np.dtype("bfloat16")}
    assert {x.dtype for x in jax.tree.leaves(adapters)} == {np.dtype("float32")}

    # DeepSeekMath-7B: 30 layers, D 4096, F 11008; rank 64 on q, k, v, o (4096 -> 4096) and gate, up, down
    s, r, dev = shapes.PAPER_SHAPES["deepseek7b"], 64, 8
    d, f, n = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    adapter_params = n * r * (4 * (d + d) + 3 * (d + f))
    weights, norms = n * (4 * d * d + 3 * d * f) + 2 * s["vocab_size"] * d, (2 * n + 1) * d
    assert phases.device_bytes(adapters) == 4 * adapter_params // dev  # every adapter sharded over fsdp
    assert phases.device_bytes(base) == 2 * weights // dev + 2 * norms  # bf16; the norms replicated
    adam = phases.device_bytes(state["opt_state"])
    assert 2 * 4 * adapter_params // dev <= adam <= 2 * 4 * adapter_params // dev + 64  # mu, nu and scalars
    assert phases.device_bytes(full["opt_state"]) > 20 * adam  # full fine-tuning's Adam state
