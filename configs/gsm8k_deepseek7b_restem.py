"""Paper baseline: RestEM with deepseek7b on gsm8k, as the official polIter_deepseekSft2_restem_GSM8K.jsonnet
runs it (settings in vinejax.config.paper_baseline). Start from the SFT model and give the data:

    python experiments/run.py --config configs/gsm8k_deepseek7b_restem.py \
        --config.model.hf_path=/path/to/sft_model --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("deepseek7b", "gsm8k", "restem")
