"""Loading straight into a (data=1, fsdp=2, tensor=4) mesh of fake CPU devices, every family."""
import flax.linen as nn
import helpers_hf as H
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vinejax import sharding as shd
from vinejax.model import forward, load_hf_model
from vinejax.train.scoring import critic_values


def test_sharded_load_matches_single_device():
    path = H.cached_tiny("qwen2_untied")
    cfg, params = load_hf_model(path)
    mesh = shd.make_mesh((1, 2, 4))
    scfg, sparams = load_hf_model(path, mesh=mesh)
    assert scfg == cfg
    # Params really are sharded as the logical rules say.
    assert sparams["layers"]["wq"].sharding.spec == P(None, "fsdp", "tensor", None)
    assert sparams["layers"]["w_down"].sharding.spec == P(None, "tensor", "fsdp")
    assert sparams["lm_head"].sharding.spec == P("fsdp", "tensor")
    assert sparams["embed"].sharding.spec == P("tensor", "fsdp")
    assert len(sparams["layers"]["wq"].addressable_shards) == 8
    assert sparams["layers"]["wq"].addressable_shards[0].data.shape == (2, 32, 1, 16)
    jax.tree.map(np.testing.assert_array_equal, sparams, params)

    tokens = H.random_tokens(2, 16, seed=5)
    ref, _ = jax.jit(forward, static_argnums=1)(params, cfg, tokens)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
        out, _ = jax.jit(forward, static_argnums=1)(sparams, cfg, tokens)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def test_data_parallel_size_follows_the_set_mesh_and_rules():
    mesh = shd.make_mesh((2, 2, 2))
    assert shd.data_parallel_size() == 1  # no mesh set
    assert shd.data_parallel_size(mesh) == 4  # batch -> (data, fsdp) under DEFAULT_RULES
    with jax.set_mesh(mesh):
        assert shd.data_parallel_size() == 4  # the abstract mesh set with jax.set_mesh
        with nn.logical_axis_rules((("batch", "data"),)):
            assert shd.data_parallel_size() == 2  # the rules in effect
        assert shd.data_parallel_size(rules=(("batch", ("data", "fsdp", "tensor")),)) == 8


@pytest.mark.parametrize("variant", ["olmo2", "gemma3", "phi3"])  # q/k norms over all heads; sandwich norms; fused HF tensors
def test_families_shard_by_the_rules_and_carry_a_value_head(variant):
    """Each family's leaves (its norms included) have logical axes the rules cover, load straight
    into the mesh, and score the same logits and critic values (PPO's value head) as one device."""
    path = H.cached_tiny(variant)
    cfg, params = load_hf_model(path, value_head=True)
    mesh = shd.make_mesh((1, 2, 4))
    _, sparams = load_hf_model(path, mesh=mesh, value_head=True)
    if cfg.qk_norm == "all":  # [L, H, Dh]: heads over the tensor axis, reduced across it
        assert sparams["layers"]["q_norm"].sharding.spec == P(None, "tensor", None)
    tokens = H.random_tokens(2, 16, seed=5)
    score = jax.jit(lambda p, t: (forward(p, cfg, t)[0], critic_values(p, cfg, t)))
    ref = score(params, tokens)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
        out = score(sparams, tokens)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=0), out, ref)
    assert np.abs(np.asarray(ref[1])[:, 1:]).min() > 0  # real values, not the zero padding column
