"""VinePPO on the arithmetic task from the SFT policy of configs/arith_sft.py (`make run`)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arith_sft import arithmetic_task  # noqa: E402

from vinejax.config import base_config  # noqa: E402


def get_config():
    c = arithmetic_task(base_config())
    c.algo = "vineppo"
    c.output_dir = "runs/arith_vineppo"
    c.model.init_from = "runs/arith_sft"
    c.sampling.problems_per_iteration = 32
    c.sampling.samples_per_problem = 8
    c.sampling.batch_size = 256
    c.sampling.temperature = 0.6
    c.vineppo.num_rollouts = 9
    c.vineppo.chunk_rows = 1024
    c.ppo.epochs = 2
    c.ppo.episodes_per_step = 64
    c.ppo.micro_batch = 64
    c.ppo.kl_coef = 1e-4
    c.optim.lr = 1e-4
    c.optim.warmup_frac = 0.05
    c.train.iterations = 40
    c.train.eval_every = 5
    c.train.checkpoint_every = 5
    c.train.time_budget_minutes = 60.0  # a guard only: the demo runs its 40 iterations (~10 min on 2 CPU cores)
    c.eval.samples_per_problem = 4
    return c
