"""scripts/accelerator_check.sh in its CPU mode: every figure is printed and plausible."""
import json
import os
import pathlib
import subprocess

import pytest
from xla_flags import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_accelerator_check_tiny_mode_reports_every_figure(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = FAST_COMPILE  # one real CPU device, as on a one-chip machine
    out = subprocess.run([str(ROOT / "scripts" / "accelerator_check.sh"), "--tiny", "--sections",
                          "decode,train,mc,iteration", "--out", str(tmp_path / "f.json")],
                         capture_output=True, text=True, env=env, timeout=470)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "failed" not in out.stdout, out.stdout
    figures = json.load(open(tmp_path / "f.json"))
    for name in ("matmul peak", "decode tok/s batch 8", "train step mfu",
                 "mc continuation tok/s", "vineppo iteration s (incl. compile)", "iteration phase mc s"):
        assert figures[name]["value"] > 0, name
    assert 0 < figures["train step mfu"]["value"] <= 1.0
    assert 0 < figures["mc live fraction"]["value"] <= 1.0
