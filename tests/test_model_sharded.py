"""Loading straight into a (data=1, fsdp=2, tensor=4) mesh of fake CPU devices."""
import flax.linen as nn
import helpers_hf as H
import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from vinejax import sharding as shd
from vinejax.model import forward, load_hf_model


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
