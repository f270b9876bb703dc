"""Paper setting: ppo with deepseek7b on gsm8k (VINEPPO.md). Give the model folder and data on the command line:

    python experiments/run.py --config configs/gsm8k_deepseek7b_ppo.py \
        --config.model.hf_path=/path/to/hf_model --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("deepseek7b", "gsm8k", "ppo")
