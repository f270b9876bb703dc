"""Clear errors for bad checkpoint folders."""
import json
import shutil

import helpers_hf as H
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vinejax.model import load_hf_model


@pytest.fixture
def folder(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(H.cached_tiny("llama_gqa"), dst)
    return dst


def _edit_weights(folder, fn):
    tensors = load_file(str(folder / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_hf_model(tmp_path / "nope")


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_model(folder)


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_model(folder)


def test_missing_shard(tmp_path):
    path = H.save_tiny(tmp_path, "llama_gqa", max_shard_size="40KB")
    victim = sorted(path.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        load_hf_model(path)


def test_unsupported_model_type(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"gpt_neox.*llama, mistral, qwen2"):
        load_hf_model(folder)


def test_wrong_shape(folder):
    name = "model.layers.1.self_attn.k_proj.weight"
    _edit_weights(folder, lambda t: t.__setitem__(name, np.zeros((16, 64), np.float32)))
    with pytest.raises(ValueError, match=r"k_proj.*\(16, 64\).*\(32, 64\)"):
        load_hf_model(folder)


def test_missing_and_unexpected_tensors(folder):
    def edit(t):
        del t["model.layers.0.mlp.up_proj.weight"]
        t["model.layers.0.mlp.extra.weight"] = np.zeros((2,), np.float32)
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros((8,), np.float32)  # ignored

    _edit_weights(folder, edit)
    with pytest.raises(ValueError) as err:
        load_hf_model(folder)
    msg = str(err.value)
    assert "missing tensors (1): model.layers.0.mlp.up_proj.weight" in msg
    assert "unexpected tensors (1): model.layers.0.mlp.extra.weight" in msg


def test_inv_freq_buffers_ignored(folder):
    _edit_weights(folder, lambda t: t.__setitem__("model.layers.0.self_attn.rotary_emb.inv_freq", np.zeros((8,), np.float32)))
    cfg, params = load_hf_model(folder)
    assert params["layers"]["wq"].shape == (2, 64, 4, 16)
