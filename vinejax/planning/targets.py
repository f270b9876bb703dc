"""What a plan compiles for: fake CPU devices, or a Cloud TPU slice compiled by the TPU compiler
itself, ahead of time, on a machine without TPUs (`jax.experimental.topologies` with libtpu, as
MaxText's `train_compile.py` does).

    devices, kind = tpu_devices("v5e-8")   # 8 abstract "TPU v5 lite" devices; lower and compile on them

A TPU compile needs the `libtpu` package (jax[tpu]'s pin, e.g. `pip install 'libtpu==0.0.42.*'` for
jax 0.10.2) where Python finds it; `make libtpu` puts it in `.libtpu/` for the planner alone
(installed beside jax, every JAX program would try to start a TPU).
"""
from __future__ import annotations

import importlib.util
import math
import os
from typing import NamedTuple


class TpuSlice(NamedTuple):
    topology: str  # jax.experimental.topologies' name, chips as a grid
    chip_config: str  # "megacore": one device per chip (v4, v5p), "" = the default
    hbm_gib: float  # memory per device

    @property
    def devices(self) -> int:
        """Devices JAX sees: one per chip (megacore joins a v4 / v5p chip's two cores)."""
        return math.prod(int(n) for n in self.topology.split(":")[1].split("x"))


TPU_SLICES = {
    "v4-8": TpuSlice("v4:2x2x1", "megacore", 32.0),
    "v4-16": TpuSlice("v4:2x2x2", "megacore", 32.0),
    "v5e-4": TpuSlice("v5e:2x2", "", 16.0),
    "v5e-8": TpuSlice("v5e:2x4", "", 16.0),
    "v5e-16": TpuSlice("v5e:4x4", "", 16.0),
    "v5p-8": TpuSlice("v5p:2x2x1", "megacore", 95.0),
    "v6e-8": TpuSlice("v6e:2x4", "", 32.0),
}

# libtpu looks for TPU metadata at start-up and logs errors without it (these say there is none),
# and locks itself to one process unless told otherwise (plans may run side by side)
QUIET_ENV = {"TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-8",
             "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}


class TargetError(ValueError):
    """A target that cannot be compiled for here (one line)."""


def tpu_slice(name: str) -> TpuSlice:
    """The slice called `name` (a TPU_SLICES key); raises TargetError for others."""
    if name not in TPU_SLICES:
        raise TargetError(f"--target {name!r}: known TPU slices are {', '.join(TPU_SLICES)} (or cpu)")
    return TPU_SLICES[name]


def tpu_devices(name: str) -> tuple[list, str]:
    """(devices, kind) of TPU slice `name` for ahead-of-time compiles. Call before JAX starts a
    backend (it sets libtpu's environment); raises TargetError without libtpu."""
    spec = tpu_slice(name)
    if importlib.util.find_spec("libtpu") is None:
        raise TargetError(f"--target {name} compiles with the TPU compiler: install libtpu (jax[tpu]'s pin, "
                          "e.g. `make libtpu`, then PYTHONPATH=.libtpu)")
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from jax.experimental import topologies

    kwargs = {"chip_config_name": spec.chip_config} if spec.chip_config else {}
    devices = list(topologies.get_topology_desc(platform="tpu", topology_name=spec.topology, **kwargs).devices)
    return devices, devices[0].device_kind
