"""RestEM on the arithmetic task from the SFT policy of configs/arith_sft.py (`make run`).

The official rules at CPU scale: each iteration samples 8 responses to 128 train problems (the
official samples the whole split), keeps the correct ones and fine-tunes the SFT policy afresh
for 8 epochs; candidates every 16 cumulative steps are scored on 200 problems of the task's
"test" split (unused elsewhere, so selection never sees the reported validation problems).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arith_sft import arithmetic_task  # noqa: E402

from vinejax.config import base_config  # noqa: E402


def get_config():
    c = arithmetic_task(base_config())
    c.algo = "restem"
    c.output_dir = "runs/arith_restem"
    c.model.init_from = "runs/arith_sft"
    c.sampling.problems_per_iteration = 128
    c.sampling.samples_per_problem = 8
    c.sampling.batch_size = 256
    c.sampling.temperature = 0.6
    c.restem.epochs = 8
    c.restem.batch_size = 64
    c.restem.micro_batch = 64
    c.restem.max_per_problem = 10
    c.restem.eval_every_steps = 16
    c.restem.early_stop = "first_decrease"
    c.restem.select_split = "test"
    c.restem.num_select_problems = 200
    c.optim.lr = 3e-4  # the SFT's 3e-3 / 10, as the official 1e-6 is rho1b's SFT 1e-5 / 10
    c.optim.warmup_frac = 0.03
    c.train.iterations = 3
    c.train.eval_every = 1
    c.train.time_budget_minutes = 12.0
    c.eval.samples_per_problem = 4
    return c
