"""Paper baseline: DPO+ with deepseek7b on math, as the official polIter_deepseekSft2_dpo_positive_MATH.jsonnet
runs it (settings in vinejax.config.paper_baseline). Start from the SFT model and give the data:

    python experiments/run.py --config configs/math_deepseek7b_dpo.py \
        --config.model.hf_path=/path/to/sft_model --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("deepseek7b", "math", "dpo_positive")
