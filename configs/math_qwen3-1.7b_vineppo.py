"""Beyond the paper: vineppo of Qwen3-1.7B-Base on math with the paper's RhoMath-1.1B settings
(vinejax.config.PAPER_MODELS). Start from the SFT stage's run dir (its exported policy is both the
policy and the frozen KL reference) and give the data:

    python experiments/run.py --config configs/math_qwen3-1.7b_vineppo.py \
        --config.model.init_from=runs/math_qwen3-1.7b_sft --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("qwen3-1.7b", "math", "vineppo")
