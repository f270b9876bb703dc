"""Load Hugging Face safetensors folders of the supported families into vinejax params, and export back.

Torch-free: tensors are read with `safetensors.safe_open(framework="numpy")` (bf16 arrives as an
`ml_dtypes.bfloat16` array). Each stacked leaf (e.g. `layers/wq` [L, D, H, Dh]) is assembled in
one host numpy buffer, layer by layer, then placed straight into its target sharding with
`jax.make_array_from_callback`, so at most one leaf is held twice (host + devices) at a time.

Value head: not part of HF checkpoints. `save_hf_model` writes it to a separate
`value_head.safetensors` (keys `value_head.w`, `value_head.b`) that transformers ignores;
`load_hf_model(..., value_head=True)` reads that file when present and otherwise initialises
w ~ N(0, 1/(D+1)) (numpy seed 0) and b = 0.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from vinejax import sharding as shd
from vinejax.model import hf_keys, llama
from vinejax.model.config import ModelConfig
from vinejax.model.hf_config import FAMILIES, config_from_hf, config_to_hf
from vinejax.multihost import barrier, is_main_process, to_host, to_host_by_rows

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
VALUE_HEAD_FILE = "value_head.safetensors"
KEPT_FILES = ("generation_config.json",)  # copied from the folder a model came from into its export
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def _list(names, limit: int = 20) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_hf_config(path: Union[str, os.PathLike]) -> dict:
    """The parsed `config.json` of a HF model folder; FileNotFoundError naming what is missing."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"config.json not found in model folder: {config_file}")
    return json.loads(config_file.read_text())


def _weight_files(folder: pathlib.Path) -> dict:
    """{tensor name: file path} from the index json, or from the single safetensors file."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        for fname in sorted(set(weight_map.values())):
            if not (folder / fname).is_file():
                raise FileNotFoundError(f"safetensors shard listed in {index} not found: {folder / fname}")
        return {name: folder / fname for name, fname in weight_map.items()}
    single = folder / SINGLE_FILE
    if not single.is_file():
        raise FileNotFoundError(
            f"no weights in {folder}: expected {SINGLE_FILE} or {INDEX_FILE} (only safetensors is supported)"
        )
    with safe_open(str(single), framework="numpy") as f:
        return {name: single for name in f.keys()}


def _leaf_names(cfg: ModelConfig) -> tuple[list, list]:
    specs = llama.param_specs(cfg)
    return list(specs["layers"]), [k for k in specs if k in hf_keys.GLOBAL_KEYS]


def _hf_table(cfg: ModelConfig) -> dict:
    """{HF name: [hf_keys.Part]} of every tensor of `cfg`'s family."""
    return hf_keys.expected_hf_names(cfg, FAMILIES[cfg.model_type].layer_keys, llama.param_specs(cfg))


def _sources(table: dict) -> dict:
    """{(leaf, layer): (HF name, Part, full HF shape)}: where each layer of each leaf is read from."""
    return {(part.leaf, part.layer): (name, part, hf_keys.full_hf_shape(parts))
            for name, parts in table.items() for part in parts}


def _check_names(cfg: ModelConfig, files: dict, table: dict) -> None:
    present = {n for n in files if not hf_keys.IGNORED.search(n)}
    if cfg.tie_word_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints still store the copy
    missing = set(table) - present
    unexpected = present - set(table)
    if missing or unexpected:
        msg = []
        if missing:
            msg.append(f"missing tensors ({len(missing)}): {_list(missing)}")
        if unexpected:
            msg.append(f"unexpected tensors ({len(unexpected)}): {_list(unexpected)}")
        raise ValueError(f"checkpoint does not match {cfg.model_type} config: " + "; ".join(msg))


class _Reader:
    """Keeps one `safe_open` handle per file and checks each tensor's shape on read."""

    def __init__(self, files: dict):
        self.files = files
        self.handles: dict = {}

    def get(self, name: str, expected_shape: tuple, rows: Optional[tuple] = None) -> np.ndarray:
        """Tensor `name` (only its first-axis `rows` [start, stop) when given)."""
        path = self.files[name]
        if path not in self.handles:
            self.handles[path] = safe_open(str(path), framework="numpy")
        handle = self.handles[path]
        shape = tuple(handle.get_slice(name).get_shape())
        if shape != tuple(expected_shape):
            raise ValueError(
                f"tensor {name!r} has shape {shape} but the config expects {tuple(expected_shape)}"
            )
        if rows is not None and tuple(rows) != (0, shape[0]):
            return handle.get_slice(name)[rows[0]:rows[1]]
        return handle.get_tensor(name)


def _place(arr: np.ndarray, sharding) -> jax.Array:
    if sharding is None:
        return jnp.asarray(arr)
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx], dtype=arr.dtype)


def _value_head(folder: pathlib.Path, cfg: ModelConfig, dtype) -> dict:
    file = folder / VALUE_HEAD_FILE
    if file.is_file():
        reader = _Reader({"value_head.w": file, "value_head.b": file})
        w = reader.get("value_head.w", (cfg.hidden_size,))
        b = reader.get("value_head.b", (1,)).reshape(())  # stored as [1]
    else:
        w = np.random.RandomState(0).normal(size=(cfg.hidden_size,)) / math.sqrt(cfg.hidden_size + 1)
        b = np.zeros(())
    return {"w": np.asarray(w).astype(dtype), "b": np.asarray(b).astype(dtype)}


def load_hf_model(
    path: Union[str, os.PathLike],
    mesh=None,
    rules=shd.DEFAULT_RULES,
    dtype: Optional[str] = None,
    param_dtype: Optional[str] = None,
    **config_overrides,
) -> tuple[ModelConfig, dict]:
    """Load a HF safetensors folder of a supported family → (ModelConfig, params).

    `param_dtype` (storage) defaults to the checkpoint dtype, `dtype` (compute) to `param_dtype`.
    With `mesh`, every leaf is created directly in its NamedSharding from
    `sharding.tree_shardings(llama.param_logical_axes(cfg), ...)` under `rules`; otherwise on the
    default device. `config_overrides` go to `ModelConfig` (e.g. `remat=True`, `value_head=True`).
    Raises FileNotFoundError (missing folder / config / weights, naming the path) and ValueError
    (unsupported model_type, a tensor shape disagreeing with the config, missing or unexpected
    tensors). `rotary_emb.inv_freq` buffers are ignored.
    """
    folder = pathlib.Path(path)
    cfg = config_from_hf(read_hf_config(folder), dtype=dtype, param_dtype=param_dtype, **config_overrides)
    files = _weight_files(folder)
    layer_leaves, global_leaves = _leaf_names(cfg)
    table = _hf_table(cfg)
    _check_names(cfg, files, table)
    sources = _sources(table)

    specs = llama.param_specs(cfg)
    shardings = None
    if mesh is not None:
        shardings = shd.tree_shardings(llama.param_logical_axes(cfg), llama.param_shapes(cfg), mesh, rules)
    np_dtype = np.dtype(cfg.weight_dtype)
    reader = _Reader(files)
    params: dict = {"layers": {}}

    def read(leaf, layer, shape):  # one layer of one leaf, in our layout
        hf_name, part, full = sources[leaf, layer]
        return hf_keys.to_ours(part.kind, reader.get(hf_name, full, part.rows), shape)

    for name in global_leaves:
        shape = specs[name][0]
        a = read(name, None, shape)
        params[name] = _place(np.ascontiguousarray(a, dtype=np_dtype), shardings and shardings[name])

    for name in layer_leaves:
        shape = specs["layers"][name][0]
        buf = np.empty(shape, np_dtype)
        for i in range(cfg.num_layers):
            buf[i] = read(name, i, shape[1:])
        params["layers"][name] = _place(buf, shardings and shardings["layers"][name])
        del buf

    if cfg.value_head:
        vh = _value_head(folder, cfg, np_dtype)
        params["value_head"] = {
            k: _place(v, shardings and shardings["value_head"][k]) for k, v in vh.items()
        }
    return cfg, params


# ----------------------------------------------------------------------------- export


def _parse_size(size: Union[int, str]) -> int:
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def save_hf_model(
    params: dict,
    cfg: ModelConfig,
    path: Union[str, os.PathLike],
    tokenizer=None,
    dtype: Optional[str] = None,
    max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_BYTES,
    source: Union[str, os.PathLike, None] = None,
) -> pathlib.Path:
    """Write `params` as a transformers-loadable folder: config.json + safetensors (+ tokenizer,
    with its chat template; + `KEPT_FILES` of the `source` folder the model came from, e.g. its
    generation_config.json).

    `dtype` is the storage dtype (default `cfg.export_dtype`, the dtype of the checkpoint the
    model was loaded from, else `cfg.param_dtype`). Weights larger than
    `max_shard_size` (bytes or "2GB") are split into `model-0000k-of-0000n.safetensors` with a
    `model.safetensors.index.json`. Sharded arrays are gathered to host first; with several
    processes only process 0 writes. A value head goes to `value_head.safetensors`.
    Returns the folder path.
    """
    folder = pathlib.Path(path)
    out_dtype = np.dtype(jnp.dtype(dtype or cfg.export_dtype or cfg.param_dtype))
    layer_leaves, global_leaves = _leaf_names(cfg)
    table = _hf_table(cfg)
    main = is_main_process()

    def fetch(x, gather=to_host):  # every process joins the gather; only process 0 keeps the host copy
        a = gather(x)
        return a if main else None

    host = {name: fetch(params[name]) for name in global_leaves}
    host.update({name: fetch(params["layers"][name], to_host_by_rows) for name in layer_leaves})  # layer by layer
    value_head = {k: fetch(v) for k, v in params.get("value_head", {}).items()} if cfg.value_head else {}
    if main:
        _write_folder(folder, cfg, table, host, value_head, out_dtype, _parse_size(max_shard_size), tokenizer)
        for name in KEPT_FILES if source else ():
            kept = pathlib.Path(source) / name
            if kept.is_file() and kept.resolve() != (folder / name).resolve():
                shutil.copyfile(kept, folder / name)
    barrier(f"save_hf_model {folder}")  # no process reads the folder before it is complete
    return folder


def _write_folder(folder: pathlib.Path, cfg: ModelConfig, table: dict, host: dict, value_head: dict,
                  out_dtype: np.dtype, limit: int, tokenizer) -> None:
    """Write host weights (`host[leaf]`, stacked over layers) as safetensors shards of at most
    `limit` bytes, the value head, config.json and the tokenizer into `folder`."""

    def tensor(hf_name: str) -> np.ndarray:  # fused parts concatenated along the first axis
        out = [hf_keys.to_hf(p.kind, (host[p.leaf] if p.layer is None else host[p.leaf][p.layer]).astype(out_dtype))
               for p in table[hf_name]]
        return out[0] if len(out) == 1 else np.concatenate(out, axis=0)

    # Plan shards from sizes first, then materialise one shard at a time.
    shards, current, current_bytes = [], [], 0
    for hf_name, parts in table.items():
        nbytes = math.prod(hf_keys.full_hf_shape(parts)) * out_dtype.itemsize
        if current and current_bytes + nbytes > limit:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(hf_name)
        current_bytes += nbytes
    shards.append(current)

    folder.mkdir(parents=True, exist_ok=True)
    for stale in [folder / SINGLE_FILE, folder / INDEX_FILE, *folder.glob("model-*-of-*.safetensors")]:
        if stale.is_file():
            stale.unlink()
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file({n: tensor(n) for n in shards[0]}, str(folder / SINGLE_FILE), metadata=metadata)
    else:
        weight_map, total = {}, 0
        for k, names in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            tensors = {n: tensor(n) for n in names}
            total += sum(t.nbytes for t in tensors.values())
            save_file(tensors, str(folder / fname), metadata=metadata)
            weight_map.update({n: fname for n in names})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
    if value_head:
        save_file(
            {
                "value_head.w": np.ascontiguousarray(value_head["w"].astype(out_dtype)),
                "value_head.b": value_head["b"].astype(out_dtype).reshape(1),
            },
            str(folder / VALUE_HEAD_FILE),
            metadata=metadata,
        )
    (folder / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype=str(out_dtype)), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
