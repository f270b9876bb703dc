"""VinePPO with LoRA on the arithmetic task, from the SFT policy of configs/arith_sft.py: the
settings of configs/arith_vineppo.py with the policy frozen and rank-8 adapters on every
projection trained at 10x its learning rate (the KL reference is the frozen SFT policy itself).

    python experiments/run.py --config configs/arith_vineppo_lora.py --config.model.init_from=runs/arith_sft
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arith_vineppo import get_config as full_config  # noqa: E402


def get_config():
    c = full_config()
    c.output_dir = "runs/arith_vineppo_lora"
    c.model.lora.rank = 8
    c.model.lora.alpha = 16.0
    c.optim.lr = 1e-3
    return c
