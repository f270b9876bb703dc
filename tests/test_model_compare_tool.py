"""`python -m vinejax.tools.compare_hf` exits 0 on a faithful folder and non-zero otherwise."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import helpers_hf as H
import pytest

from vinejax.tools import compare_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cli_subprocess_passes():
    path = H.cached_tiny("llama_gqa")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "vinejax.tools.compare_hf", str(path), "--batch", "3", "--length", "16"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max_abs_logit_diff=" in proc.stdout and "OK" in proc.stdout


@pytest.mark.parametrize("variant", ["qwen3_window", "gemma3"])
def test_new_families_pass(variant, capsys):
    assert compare_hf.main([str(H.cached_tiny(variant)), "--length", "16"]) == 0
    assert "OK" in capsys.readouterr().out


def test_unsupported_model_type_is_one_line_before_torch(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "model"
    shutil.copytree(H.cached_tiny("llama_gqa"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    monkeypatch.setattr(compare_hf, "torch_logits", lambda *a, **k: pytest.fail("torch loaded the model"))
    assert compare_hf.main([str(folder)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'gpt_neox'" in lines[0] and "qwen3, gemma2, gemma3_text" in lines[0], lines


def test_tiny_tolerance_fails(capsys):
    path = H.cached_tiny("llama_gqa")
    assert compare_hf.main([str(path), "--tol", "1e-12", "--length", "8"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_padded_batch_layout():
    tokens, mask, positions = compare_hf.padded_batch(4, 10, 50, seed=0)
    assert mask[0].all() and mask[1, 0] == 1 and mask[2, -1] == 1
    assert (tokens[mask == 0] == 0).all()
    assert all(positions[b][mask[b] > 0].tolist() == list(range(mask[b].sum())) for b in range(4))


def test_perturbed_weights_fail(monkeypatch, capsys):
    """A vinejax side whose weights drift (embeddings shifted by 1e-2) is caught at the default tol."""
    path = H.cached_tiny("llama_gqa")
    from vinejax import model as M

    original = M.load_hf_model

    def perturbed(*args, **kwargs):
        cfg, params = original(*args, **kwargs)
        params["embed"] = params["embed"] + 1e-2
        return cfg, params

    monkeypatch.setattr(M, "load_hf_model", perturbed)
    assert compare_hf.main([str(path), "--length", "8"]) == 1
    assert "FAIL" in capsys.readouterr().out
