"""Beyond the paper: sft of Qwen3-8B-Base on gsm8k with the paper's DeepSeekMath-7B settings
(vinejax.config.PAPER_MODELS). Give the model folder and data on the command line:

    python experiments/run.py --config configs/gsm8k_qwen3-8b_sft.py \
        --config.model.hf_path=/path/to/Qwen3-8B-Base --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("qwen3-8b", "gsm8k", "sft")
