"""Paper ablation: VinePPO with K = 3 MC continuations per state (the paper ablates K ∈ {1, 3, 9}
on RhoMath-1.1B / MATH; K = 9 is configs/math_rho1b_vineppo.py). Run as that config:

    python experiments/run.py --config configs/math_rho1b_vineppo_k3.py \
        --config.model.init_from=runs/math_rho1b_sft --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    cfg = paper_config("rho1b", "math", "vineppo")
    cfg.vineppo.num_rollouts = 3
    cfg.output_dir = "runs/math_rho1b_vineppo_k3"
    return cfg
