"""Beyond the paper: sft of Qwen3-1.7B-Base on math with the paper's RhoMath-1.1B settings
(vinejax.config.PAPER_MODELS). Give the model folder and data on the command line:

    python experiments/run.py --config configs/math_qwen3-1.7b_sft.py \
        --config.model.hf_path=/path/to/Qwen3-1.7B-Base --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("qwen3-1.7b", "math", "sft")
