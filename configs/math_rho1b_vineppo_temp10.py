"""Paper ablation: vineppo at sampling temperature 1.0 (official configs/temperatures/temp1.0.jsonnet; the
paper's default is 0.6). The temperature also divides the logits of the current, old and
reference log-probs, as in the official trainer. Run as configs/math_rho1b_vineppo.py.
"""
from vinejax.config import paper_config


def get_config():
    cfg = paper_config("rho1b", "math", "vineppo")
    cfg.sampling.temperature = 1.0
    cfg.output_dir = "runs/math_rho1b_vineppo_temp10"
    return cfg
