"""Plans compiled by the TPU compiler for a TPU slice, on this machine without TPUs
(`python -m vinejax.tools.plan --target v5e-8`). Needs libtpu in `.libtpu/` (`make libtpu`);
skipped without it. Each plan runs in its own process with `.libtpu` on PYTHONPATH, as a user
runs it (libtpu installed beside jax would make every JAX program look for a TPU)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBTPU = os.path.join(ROOT, ".libtpu")
pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(LIBTPU, "libtpu")),
                                reason="libtpu is not in .libtpu/ (make libtpu)")
TINY = ["--config", os.path.join(ROOT, "configs", "arith_vineppo.py"), "--config.model.init_from=",
        "--config.model.num_layers=2", "--config.model.dtype=bfloat16", "--config.model.param_dtype=bfloat16"]


def _plan(tmp_path, *args: str) -> tuple[int, str, dict]:
    out = tmp_path / "plan.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([LIBTPU, ROOT]))
    proc = subprocess.run([sys.executable, "-m", "vinejax.tools.plan", *TINY, "--json", str(out), "--no-search", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return proc.returncode, proc.stdout, json.loads(out.read_text())


def test_a_v5e_slice_plan_compiles_for_its_chips(tmp_path):
    code, text, plan = _plan(tmp_path, "--target", "v5e-8", "--phases", "generate,policy_step")
    assert code == 0 and plan["fits"]
    assert plan["devices"] == dict(count=8, kind="TPU v5 lite", platform="tpu")
    assert plan["hbm_bytes"] == 16 * 2**30  # the slice's memory per chip, no --hbm-gib given
    assert "the TPU compiler's own memory" in text and "compiled for CPU devices" not in text
    for row in plan["phases"]:
        assert row["compiled"]["temp"] > 0 and row["compiled"]["code"] > 0 and not row["compiled"].get("refused")


def test_a_program_too_big_for_the_chip_is_refused_with_what_it_needs(tmp_path):
    """16,384 prompts x 8 samples decoding at once on a v5e-8: the KV cache alone is 18 GiB a chip. The TPU compiler refuses; the plan keeps the temporaries it said it needed, at least
    the cache re-derived from the shapes, and says it does not fit (exit 1)."""
    code, text, plan = _plan(tmp_path, "--target", "v5e-8", "--phases", "generate", "--mesh", "8,1,1",
                             "--config.sampling.batch_size=16384", "--config.model.hidden_size=2048",
                             "--config.model.num_heads=16", "--config.model.num_kv_heads=16")
    (row,) = plan["phases"]
    rows, room = 16384 * 8, 144  # prompts x samples; the planned cache slots (prompt 64 + 80 new tokens)
    assert f"cache {room} slots" in row["sizes"]
    cache = 2 * 2 * rows * room * 2048 * 2 // 8  # k and v, 2 layers, bf16, rows over 8 devices
    assert code == 1 and not plan["fits"] and row["compiled"]["refused"]
    assert cache <= row["compiled"]["temp"] < 4 * cache, (row["compiled"]["temp"], cache)
    assert "out of memory" not in text  # the log line is on stderr; the table shows the number


def test_an_unknown_slice_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([LIBTPU, ROOT]))
    proc = subprocess.run([sys.executable, "-m", "vinejax.tools.plan", *TINY, "--target", "v9-8"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "v9-8" in proc.stderr and "v5e-8" in proc.stderr
