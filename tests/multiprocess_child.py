"""One process of a vinejax run over several processes (launched by tests/test_train_multiprocess.py).

    python tests/multiprocess_child.py RUN_DIR [RUN_DIR ...] [--coordinator HOST:PORT
        --num-processes N --process-id I] [--kill-after-iteration K] [--check-divergence]
        [--checkpoint-every C] [--sigterm-process P]

Runs `loop.run(run_config(RUN_DIR))` for each RUN_DIR in turn; the folder's name is the algorithm
(`.../vineppo`, `.../ppo`). With --coordinator the process joins a `jax.distributed` run through
the config keys mesh.distributed, mesh.coordinator_address, mesh.num_processes, mesh.process_id;
without it the runs are ordinary single-process runs. --kill-after-iteration K: once the LAST
run's checkpoint of iteration K is written on every process, print READY_TO_KILL and wait for
the parent to kill the process. --check-divergence: finally check that `assert_same_on_all_processes`
raises on data that differs between processes. --sigterm-process P: process P sends itself a
SIGTERM at a random moment of the training phase of iteration 0 (a preempted host); a run that
then stops (`Preempted`) prints PREEMPTED and the checkpoint it stopped with, and the process exits
with status 75. The parent sets XLA_FLAGS (fake CPU devices per process) and JAX_PLATFORMS=cpu;
collectives between processes use gloo.
"""
import argparse
import faulthandler
import os
import pathlib
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ (test_train_loop)

READY_TO_KILL = "checkpoint written on every process: kill me"
PREEMPTED = "preempted at checkpoint"
MESH = (1, 8, 1)  # fsdp over all 8 devices: parameters and batches sharded across both processes


def run_config(run_dir: str, checkpoint_every: int = 1):
    """The tiny arithmetic run of `run_dir` (named after its algorithm), 2 iterations of 16 episodes."""
    from test_train_loop import tiny_config

    run_dir = pathlib.Path(run_dir)
    return tiny_config(run_dir.parent, run_dir.name, iterations=2, **{
        "sampling.max_new_tokens": 32, "sampling.samples_per_problem": 4, "ppo.episodes_per_step": 16,
        "ppo.micro_batch": 8, "mesh.shape": MESH, "train.checkpoint_every": checkpoint_every})


def use_learnable_reward() -> None:
    """The reward of tests/test_train_loop.py that a random model earns about half the time."""
    from test_train_loop import reward_odd_length

    from vinejax.tasks import arithmetic

    arithmetic.grade_batch = reward_odd_length


def wait_for_kill_after(iteration: int) -> None:
    """Once the checkpoint of `iteration` is written on every process, print READY_TO_KILL and
    wait for the parent to kill this process (SIGKILL, as a preempted job dies)."""
    from vinejax import multihost
    from vinejax.checkpoint import Checkpointer

    real_save = Checkpointer.save

    def save_then_wait(self, step, state, meta, wait=True):
        real_save(self, step, state, meta, wait)
        if meta["progress"]["position"] == iteration:
            multihost.barrier("checkpoint written")
            print(READY_TO_KILL, flush=True)
            time.sleep(3600)

    Checkpointer.save = save_then_wait


def sigterm_in_training() -> None:
    """SIGTERM to this process at a random moment of iteration 0's training phase."""
    import pytest
    from helpers_preempt import SignalDuring, hook_timer_phase

    hook_timer_phase(pytest.MonkeyPatch(), "train", SignalDuring(0, max_delay=1.0))


def check_divergence() -> None:
    """`assert_same_on_all_processes` must raise when each process holds different data."""
    import jax
    import numpy as np

    from vinejax.multihost import assert_same_on_all_processes

    assert_same_on_all_processes("equal data", np.arange(5))
    try:
        assert_same_on_all_processes("per-process data", np.array([jax.process_index()]))
    except RuntimeError as error:
        print(f"divergence detected: {error}", flush=True)
    else:
        raise AssertionError("different data on the processes was not detected")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--coordinator", default="")
    parser.add_argument("--num-processes", type=int, default=0)
    parser.add_argument("--process-id", type=int, default=-1)
    parser.add_argument("--kill-after-iteration", type=int, default=-1)
    parser.add_argument("--check-divergence", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--sigterm-process", type=int, default=-1)
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for stacks before a kill

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if os.environ.get("VINEJAX_TEST_COMPILE_CACHE"):  # later runs and launches reuse compilations
        jax.config.update("jax_compilation_cache_dir", os.environ["VINEJAX_TEST_COMPILE_CACHE"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from vinejax.checkpoint import Checkpointer
    from vinejax.train import loop
    from vinejax.train.preemption import EXIT_PREEMPTED, Preempted

    use_learnable_reward()
    if args.sigterm_process >= 0 and args.sigterm_process == args.process_id:
        sigterm_in_training()
    for i, run_dir in enumerate(args.run_dirs):
        if i == len(args.run_dirs) - 1 and args.kill_after_iteration >= 0:
            wait_for_kill_after(args.kill_after_iteration)
        cfg = run_config(run_dir, args.checkpoint_every)
        if args.coordinator:
            cfg.mesh.distributed = True
            cfg.mesh.coordinator_address = args.coordinator
            cfg.mesh.num_processes = args.num_processes
            cfg.mesh.process_id = args.process_id
        try:
            loop.run(cfg)
        except Preempted as stopped:
            step = Checkpointer(os.path.join(cfg.output_dir, "checkpoints")).latest_step()
            print(f"process {jax.process_index()} of {jax.process_count()}: {PREEMPTED} {step} ({stopped})", flush=True)
            sys.exit(EXIT_PREEMPTED)
    if args.check_divergence:
        check_divergence()
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local devices, "
          f"{jax.device_count()} in all; done", flush=True)


if __name__ == "__main__":
    main()
