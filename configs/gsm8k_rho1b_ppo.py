"""Paper setting: ppo with rho1b on gsm8k (VINEPPO.md). Give the model folder and data on the command line:

    python experiments/run.py --config configs/gsm8k_rho1b_ppo.py \
        --config.model.hf_path=/path/to/hf_model --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("rho1b", "gsm8k", "ppo")
