"""`python -m vinejax.tools.compare_hf` exits 0 on a faithful folder and non-zero otherwise."""
import os
import pathlib
import subprocess
import sys

import helpers_hf as H

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
