"""Paper ablation: vineppo at sampling temperature 0.8 (official configs/temperatures/temp0.8.jsonnet; the
paper's default is 0.6). The temperature also divides the logits of the current, old and
reference log-probs, as in the official trainer. Run as configs/math_rho1b_vineppo.py.
"""
from vinejax.config import paper_config


def get_config():
    cfg = paper_config("rho1b", "math", "vineppo")
    cfg.sampling.temperature = 0.8
    cfg.output_dir = "runs/math_rho1b_vineppo_temp08"
    return cfg
