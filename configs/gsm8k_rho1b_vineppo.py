"""Paper setting: vineppo with rho1b on gsm8k (VINEPPO.md). Start from the SFT stage's run dir (its
exported policy is both the policy and the frozen KL reference) and give the data:

    python experiments/run.py --config configs/gsm8k_rho1b_vineppo.py \
        --config.model.init_from=runs/gsm8k_rho1b_sft --config.task.data_dir=../shared/data

(or `--config.model.hf_path=/path/to/an/sft_model` for an SFT model saved elsewhere).
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("rho1b", "gsm8k", "vineppo")
