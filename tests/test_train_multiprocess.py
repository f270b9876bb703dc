"""Two processes on localhost (jax.distributed, gloo collectives), 4 fake CPU devices each, one
8-device mesh: VinePPO and PPO give the losses and exported params of one process with 8 devices;
a run killed on both processes after iteration 1 resumes to the uninterrupted result; and a SIGTERM
to one process stops both at the same step (JAX's preemption sync), each saving its shards of one
checkpoint, and both resume to the uninterrupted result.

The processes run tests/multiprocess_child.py; the single-process reference runs the same script
with the same XLA flags, so only the process layout differs.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from multiprocess_child import PREEMPTED, READY_TO_KILL, run_config
from safetensors import safe_open
from test_train_loop import initial_params, read_metrics
from xla_flags import FAST_COMPILE

from vinejax.model.hf import load_hf_model

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_child.py")
ROOT = os.path.dirname(os.path.dirname(CHILD))
TIMEOUT_S = 1200  # per launch: about 2 CPU-minutes per process, up to 8 minutes on a loaded machine
COMPARED = ("rewards/mean", "pg_loss", "kl", "approx_kl", "ratio", "pg_clipfrac", "grad_norm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """`processes` children running `run_dirs`, each with `devices` fake CPU devices; logs in log_dir."""

    def __init__(self, log_dir, run_dirs, processes: int, devices: int, cache_dir, *flags):
        os.makedirs(log_dir, exist_ok=True)
        env = dict(os.environ, JAX_PLATFORMS="cpu", VINEJAX_TEST_COMPILE_CACHE=str(cache_dir),
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
        dist = []
        port = free_port()
        self.logs, self.procs = [], []
        for i in range(processes):
            if processes > 1:
                dist = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
            self.logs.append(os.path.join(log_dir, f"process{i}.log"))
            with open(self.logs[-1], "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, CHILD, *map(str, run_dirs), *dist, *flags], cwd=ROOT, env=env, stdout=log,
                    stderr=subprocess.STDOUT))
        self.started = time.time()

    def wait(self, kill_on: str = "", status: int = 0) -> float:
        """Wait until every process exits with `status`, or (with `kill_on`) until every log shows
        `kill_on` and then SIGKILL them all; fail with the logs' tails as soon as one process
        fails or after TIMEOUT_S (with every process's Python stacks). Returns the launch's
        wall-clock seconds."""
        ready = False
        while any(p.poll() is None for p in self.procs) and not ready:
            failed = any(p.poll() not in (None, status) for p in self.procs)
            ready = bool(kill_on) and all(kill_on in self.output(i) for i in range(len(self.procs)))
            timed_out = time.time() - self.started > TIMEOUT_S
            if failed or ready or timed_out:
                if timed_out:  # a hang: the children print their Python stacks into their logs
                    for p in self.procs:
                        p.send_signal(signal.SIGUSR1)
                    time.sleep(3)
                for p in self.procs:
                    p.kill()
                    p.wait()
            time.sleep(0.5)
        codes = [p.returncode for p in self.procs]
        if not ready and codes != [status] * len(codes):
            tails = "\n".join(f"--- {log} (exit {c}):\n{self.tail(log)}" for log, c in zip(self.logs, codes))
            pytest.fail(f"a process failed or timed out (exit codes {codes})\n{tails}")
        return time.time() - self.started

    @staticmethod
    def tail(path: str, lines: int = 60) -> str:
        with open(path) as f:
            text = [l for l in f if "Gloo" not in l]  # gloo's connection chatter
        return "".join(text[-lines:])

    def output(self, i: int = 0) -> str:
        with open(self.logs[i]) as f:
            return f.read()


def exported(run_dir):
    _, params = load_hf_model(os.path.join(run_dir, "hf"))
    return jax.device_get(params)


def assert_params_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=atol)


def assert_metrics_match(single: dict, multi: dict, keys):
    for key in keys:
        assert multi[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key


def safetensors_layout(hf_dir) -> dict:
    """{tensor name: shape} of an exported folder's weights."""
    with safe_open(os.path.join(hf_dir, "model.safetensors"), "np") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_exactly(tmp_path):
    # XLA's persistent cache spares the reference and process 0 repeated compiles (JAX lets only
    # process 0 write it, and on CPU process 1's cache keys differ, so process 1 compiles each launch).
    cache = tmp_path / "compile_cache"
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    reference = Launch(one / "logs", [one / "vineppo", one / "ppo"], 1, 8, cache)
    # Both algorithms uninterrupted, then a VinePPO run killed on both processes after iteration 1.
    first = Launch(two / "logs", [two / "vineppo", two / "ppo", killed / "vineppo"], 2, 4, cache,
                   "--kill-after-iteration", "1")
    seconds = {"reference": reference.wait(), "two processes": first.wait(kill_on=READY_TO_KILL)}
    assert not os.path.exists(killed / "vineppo" / "hf")
    # SIGTERM to process 1 only, during iteration 0's training: both stop at the same safe point.
    preempted = tmp_path / "preempted"
    sigterm = Launch(preempted / "logs", [preempted / "vineppo"], 2, 4, cache, "--checkpoint-every", "5",
                     "--sigterm-process", "1")
    seconds["preempted"] = sigterm.wait(status=75)
    stops = [sigterm.output(i).split(PREEMPTED + " ")[1].split()[0] for i in range(2)]
    assert stops[0] == stops[1] in ("1", "2"), stops  # the same step on both hosts (iteration 0's end, or 1's)
    assert sorted(os.listdir(preempted / "vineppo" / "checkpoints")) == [stops[0]]  # one checkpoint, complete
    assert all(f"(preempted (a preemption notice): stopped at iteration {stops[0]} " in sigterm.output(i) for i in range(2))
    assert not os.path.exists(preempted / "vineppo" / "hf")
    resumed = Launch(killed / "logs", [killed / "vineppo", preempted / "vineppo"], 2, 4, cache, "--check-divergence")
    seconds["resumed"] = resumed.wait()
    print("launch seconds:", seconds)
    assert "resumed from checkpoint 1 " in resumed.output(0)
    assert "divergence detected: per-process data differs" in resumed.output(1)
    for i in range(2):
        assert "process %d of 2: 4 local devices, 8 in all; done" % i in resumed.output(i)

    before = initial_params(run_config(str(one / "vineppo")))
    for algo in ("vineppo", "ppo"):
        single, multi = read_metrics(run_config(str(one / algo))), read_metrics(run_config(str(two / algo)))
        assert [r["iteration"] for r in multi] == [0, 1]  # written once, by process 0
        for s, m in zip(single, multi):
            assert_metrics_match(s, m, COMPARED + (("mc/num_states",) if algo == "vineppo" else ("vf_loss",)))
        assert 0 < single[0]["rewards/mean"] < 1 and single[0]["advantages/std"] > 0.1
        after = exported(one / algo)
        assert_params_close(after, exported(two / algo), atol=2e-5)
        moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))
        assert moved > 1e-4, "training did not change the policy"
        # One folder, written by process 0: the same files, tensors and config as one process writes.
        assert sorted(os.listdir(one / algo / "hf")) == sorted(os.listdir(two / algo / "hf"))
        assert safetensors_layout(one / algo / "hf") == safetensors_layout(two / algo / "hf")
        assert json.load(open(one / algo / "hf" / "config.json")) == json.load(open(two / algo / "hf" / "config.json"))

    # Killed after iteration 1 and restarted on both processes: the uninterrupted run's result.
    assert sorted(os.listdir(killed / "vineppo" / "checkpoints")) == ["1", "2"]
    assert f"resumed from checkpoint {stops[0]} " in resumed.output(0)
    straight = read_metrics(run_config(str(two / "vineppo")))
    for run in (killed, preempted):
        assert_params_close(exported(run / "vineppo"), exported(two / "vineppo"), atol=0)
        restarted = read_metrics(run_config(str(run / "vineppo")))
        assert [r["iteration"] for r in restarted] == [0, 1]  # each iteration logged once
        for s, r in zip(straight, restarted):
            assert_metrics_match(s, r, COMPARED + ("mc/num_states",))
