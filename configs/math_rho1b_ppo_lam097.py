"""Paper ablation: PPO with GAE λ = 0.97 (official configs/trainers/lam0.97.jsonnet; the paper's
PPO uses λ = 1). Run as configs/math_rho1b_ppo.py.
"""
from vinejax.config import paper_config


def get_config():
    cfg = paper_config("rho1b", "math", "ppo")
    cfg.ppo.gae_lambda = 0.97
    cfg.output_dir = "runs/math_rho1b_ppo_lam097"
    return cfg
