"""Paper baseline: DPO+ with rho1b on gsm8k, as the official polIter_rho1bSft2_dpo_positive_GSM8K.jsonnet
runs it (settings in vinejax.config.paper_baseline). Start from the SFT model and give the data:

    python experiments/run.py --config configs/gsm8k_rho1b_dpo.py \
        --config.model.hf_path=/path/to/sft_model --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("rho1b", "gsm8k", "dpo_positive")
