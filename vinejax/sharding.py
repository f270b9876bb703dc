"""Device mesh from a config and logical-axis rules → `NamedSharding` for params and batches.

Mesh axes (any may have size 1): `data` (pure data parallel), `fsdp` (data parallel with
parameters sharded over it), `tensor` (tensor parallel over heads / mlp / vocab). Rules are an
ordered tuple of (logical axis, mesh axis or tuple of mesh axes or None); every logical axis of a
parameter must have a rule. A dimension that a mesh axis does not divide is replicated over it.
Decoding lays its weights out differently from training (`decode_out`, `decode_rows`): sampled
rows are few, so they move between devices instead of the weights.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("lora_rank", "fsdp"),  # LoRA rank: B (and wo's, w_down's A) shard over fsdp where their other dims cannot
    # decoding (`model.decode`): the weights stay where they are and the few rows move. A decode
    # weight's output dim splits over every axis that shards parameters; a decode matmul's input
    # rows gather over them (split over `data` only) and its output goes back to `batch`.
    ("decode_out", ("fsdp", "tensor")),
    ("decode_rows", "data"),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """`shape` with its -1 (at most one) replaced by the devices left over; raises ValueError when
    an axis is 0 or negative, or the shape does not fit `num_devices`."""
    shape = [int(s) for s in shape]
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {tuple(shape)}: every axis must be >= 1 (or -1 for the rest)")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} has more than one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide the {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) > num_devices:
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices but only {num_devices} exist")
    return tuple(shape)


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES, devices=None) -> Mesh:
    """A mesh of `shape` over `devices` (default: all). -1 in shape takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {tuple(shape)} does not match axis names {tuple(axis_names)}")
    shape = resolve_mesh_shape(shape, len(devices))
    grid = np.array(devices[: math.prod(shape)]).reshape(shape)
    return Mesh(grid, tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape))


def _mesh_axes_for(logical: str, rules: dict) -> tuple:
    if logical not in rules:
        raise ValueError(f"logical axis {logical!r} has no sharding rule; rules cover {sorted(rules)}")
    target = rules[logical]
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(
    logical_axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES
) -> P:
    """PartitionSpec for an array of `shape` whose dims carry `logical_axes` names.

    Each mesh axis is used at most once; mesh axes absent from the mesh, of size 1, or not
    dividing the dimension are dropped (that dimension is replicated over them).
    """
    rules = dict(rules)
    used: set = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        chosen = []
        if name is not None:
            for axis in _mesh_axes_for(name, rules):
                size = mesh.shape.get(axis, 1)
                if axis in used or size == 1:
                    continue
                if dim % (math.prod(mesh.shape[a] for a in chosen) * size):
                    continue
                chosen.append(axis)
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return P(*spec)


def tree_shardings(logical_tree, shapes_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a pytree given matching trees of logical axes and shapes/arrays."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
    flat_axes, treedef = jax.tree.flatten(logical_tree, is_leaf=is_axes)
    flat_shapes = treedef.flatten_up_to(shapes_tree)
    out = [
        NamedSharding(mesh, logical_to_spec(axes, np.shape(s) if not hasattr(s, "shape") else s.shape, mesh, rules))
        for axes, s in zip(flat_axes, flat_shapes)
    ]
    return jax.tree.unflatten(treedef, out)


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch over the data axes, the rest replicated."""
    axes = tuple(a for a in _mesh_axes_for("batch", dict(rules)) if mesh.shape.get(a, 1) > 1)
    lead = axes if len(axes) > 1 else (axes[0] if axes else None)
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def data_parallel_size(mesh=None, rules=None) -> int:
    """How many ways a batch is split: the product of the sizes of the mesh axes that the `batch`
    rule maps to.

    mesh: a `Mesh`, an `AbstractMesh` or a mapping {axis name: size} (default: the mesh set with
    `jax.set_mesh`; 1 when none);
    rules: logical-axis rules (default: the flax `nn.logical_axis_rules` in effect, else
    DEFAULT_RULES).
    """
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if getattr(mesh, "empty", False):
        return 1
    if rules is None:
        rules = nn.get_logical_axis_rules() or DEFAULT_RULES
    shape = dict(getattr(mesh, "shape", mesh))
    return math.prod(shape.get(a, 1) for a in _mesh_axes_for("batch", dict(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, P())
