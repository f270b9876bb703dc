"""PPO (critic + GAE, γ = λ = 1) on the arithmetic task: the baseline to compare with VinePPO."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arith_vineppo import get_config as vineppo_config  # noqa: E402


def get_config():
    c = vineppo_config()
    c.algo = "ppo"
    c.output_dir = "runs/arith_ppo"
    c.ppo.critic_lr = 1e-4
    return c
