"""DPO+ on the arithmetic task from the SFT policy of configs/arith_sft.py (`make run`).

The official rules at CPU scale: one round of 16 samples (official 64) for 128 train problems
(official: the whole split), at most 8 (official 64) (correct, incorrect) pairs per problem,
β 0.1 (the official MATH value), λ 50, 3 epochs over the pairs against the SFT reference.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arith_sft import arithmetic_task  # noqa: E402

from vinejax.config import base_config  # noqa: E402


def get_config():
    c = arithmetic_task(base_config())
    c.algo = "dpo_positive"
    c.output_dir = "runs/arith_dpo"
    c.model.init_from = "runs/arith_sft"
    c.sampling.problems_per_iteration = 128
    c.sampling.samples_per_problem = 16
    c.sampling.batch_size = 128
    c.sampling.temperature = 0.6
    c.dpo.beta = 0.1
    c.dpo.lam = 50.0
    c.dpo.epochs = 3
    c.dpo.batch_size = 64
    c.dpo.micro_batch = 32
    c.dpo.max_pairs_per_problem = 8
    c.dpo.eval_every_steps = 16
    c.optim.lr = 3e-4  # the SFT's 3e-3 / 10, as the official 1e-6 is rho1b's SFT 1e-5 / 10
    c.optim.warmup_frac = 0.03
    c.train.iterations = 1
    c.train.eval_every = 1
    c.train.checkpoint_every = 16
    c.train.time_budget_minutes = 12.0
    c.eval.samples_per_problem = 4
    return c
