"""`vinejax.model.decode`: one-token decode steps reproduce transformers' logits position by position,
and sampling keeps FSDP weights where they are."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from tests import helpers_hf
from vinejax import sharding
from vinejax.model import (
    ModelConfig,
    decode_caches,
    decode_step,
    decode_weights,
    forward_cached,
    init_cache,
    llama,
    load_hf_model,
    lora,
)
from vinejax.model.config import LoraConfig
from vinejax.sampling.continuation import TrajectoryCache, refill_program
from vinejax.sampling.core import Rows, SamplingConfig
from vinejax.sampling.generation import generate_program
from vinejax.sampling.refill import Queue, RefillPlan


@pytest.mark.parametrize("variant", ["llama3_rope", "qwen2_tied"])  # GQA 4:1 + llama3 RoPE; q/k/v bias + tied head
def test_decode_steps_match_transformers(variant):
    path = helpers_hf.cached_tiny(variant)
    cfg, params = load_hf_model(path)
    tokens = helpers_hf.random_tokens(2, 11, seed=3)
    ref = helpers_hf.torch_logits(helpers_hf.load_torch(path), tokens)  # [2, 11, V]
    prefill = np.array([3, 6], np.int32)  # rows start decoding at different positions
    prompts = np.where(np.arange(11)[None] < prefill[:, None], tokens, 0)
    _, _, cache = forward_cached(params, cfg, jnp.asarray(prompts), init_cache(cfg, 2, 16), new_lengths=prefill)
    weights = decode_weights(params, cfg)
    caches = decode_caches(cache)
    step = jax.jit(decode_step, static_argnums=2)
    for i in range(5):  # feed token at position prefill + i, compare the next-token logits
        pos = prefill + i
        logits, caches = step(params, weights, cfg, jnp.asarray(tokens[[0, 1], pos]), caches)
        np.testing.assert_allclose(np.asarray(logits), ref[[0, 1], pos], atol=2e-4, rtol=1e-4)
        np.testing.assert_array_equal(np.asarray(caches.lengths), pos + 1)
    assert len(caches.k) == cfg.num_layers and caches.k[0].shape == (2, cfg.num_kv_heads, 16, cfg.head_dim)


@pytest.mark.parametrize("rank", [0, 8])  # 8: LoRA on every projection, merged into the decode weights
def test_sampling_on_an_fsdp_mesh_never_holds_a_whole_weight(rank):
    """On 8 devices with FSDP weights, the decode loops (every row at once after a prefill, and
    MC continuations refilled into slots from a trajectory cache) keep the decode weights split:
    nothing is all-gathered as large as the smallest whole weight matrix, and the temporaries stay
    below one whole copy of the weights. (Laid out as for training, the loop gathered every weight
    whole, once per call: ~4x the weights' bytes here; and LoRA's A·B, summed over a rank split
    over fsdp, was a whole matrix.) A prompt pass (`trajectory_cache`) is a forward like
    scoring's and gathers one layer at a time, as FSDP does."""
    cfg = ModelConfig(vocab_size=512, hidden_size=512, intermediate_size=2048, num_layers=2, num_heads=8,
                      num_kv_heads=8, head_dim=64, max_position_embeddings=64, dtype="bfloat16",
                      param_dtype="bfloat16", lora=LoraConfig(rank=rank, alpha=16.0) if rank else None)
    mesh = sharding.make_mesh((1, 8, 1))
    spec = lambda axes, shape: NamedSharding(mesh, sharding.logical_to_spec(axes, shape, mesh))
    abstract = lambda shapes, axes: jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                                 shapes, sharding.tree_shardings(axes, shapes, mesh))
    params = abstract(llama.param_shapes(cfg), llama.param_logical_axes(cfg))
    if rank:
        params = lora.attach(params, abstract(lora.adapter_shapes(cfg), lora.adapter_logical_axes(cfg)))
    whole = NamedSharding(mesh, PartitionSpec())
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=whole)
    keys = lambda n: jax.ShapeDtypeStruct((n,), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=whole)
    scfg = SamplingConfig(max_new_tokens=16, temperature=1.0)
    b, p, t, n = 8, 4, 16, 16  # prompts / trajectories, prompt length, trajectory length, queue rows
    kv_shape = (cfg.num_layers, b, t, cfg.num_kv_heads, cfg.head_dim)
    kv = jax.ShapeDtypeStruct(kv_shape, jnp.bfloat16, sharding=spec(llama.CACHE_AXES, kv_shape))
    hidden = jax.ShapeDtypeStruct((b, t, cfg.hidden_size), jnp.bfloat16,
                                  sharding=spec(("batch", "length", "embed"), (b, t, cfg.hidden_size)))
    traj = TrajectoryCache(llama.KVCache(kv, kv, ints(b)), hidden)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        at_once = generate_program.lower(params, (ints(b, p), ints(b)), Rows(keys(b), ints(b)), None, cfg=cfg,
                                         scfg=scfg, num_samples=1, room=32).compile()
        queue = Queue(ints(n), ints(n), ints(n), keys(n), ints(n), ints(8))
        refilled = refill_program.lower(params, traj, queue, None, cfg=cfg, scfg=scfg,
                                        plan=RefillPlan(8, 32, 1)).compile()
    leaves = jax.tree.leaves(llama.param_shapes(cfg.replace(lora=None)))
    smallest = min(int(np.prod(s.shape[1:])) for s in leaves if s.ndim >= 3)  # one layer's q, k, v, o, gate, up, down
    weight_bytes = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in leaves)
    for compiled in (at_once, refilled):
        gathered = [int(np.prod([int(d) for d in dims.split(",") if d]))
                    for dims in re.findall(r"= \w+\[([\d,]*)\]\S* all-gather", compiled.as_text())]
        assert gathered and max(gathered) < smallest, (max(gathered), smallest)
        assert compiled.memory_analysis().temp_size_in_bytes < weight_bytes
