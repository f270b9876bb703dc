"""VinePPO on the ledger task from the SFT policy of sft.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sft import ledger_task  # noqa: E402

from vinejax.config import base_config  # noqa: E402


def get_config():
    c = ledger_task(base_config())
    c.algo = "vineppo"
    c.output_dir = "runs/ledger_vineppo"
    c.model.init_from = "runs/ledger_sft"
    c.sampling.problems_per_iteration = 16
    c.sampling.samples_per_problem = 8
    c.sampling.batch_size = 128
    c.vineppo.num_rollouts = 5
    c.vineppo.chunk_rows = 512
    c.ppo.episodes_per_step = 64
    c.ppo.micro_batch = 64
    c.optim.lr = 3e-5
    c.optim.warmup_frac = 0.05
    c.train.iterations = 10
    c.train.eval_every = 5
    c.train.checkpoint_every = 5
    return c
