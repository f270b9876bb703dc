"""Paper setting: vineppo with deepseek7b on math (VINEPPO.md). Give the model folder and data on the command line:

    python experiments/run.py --config configs/math_deepseek7b_vineppo.py \
        --config.model.hf_path=/path/to/hf_model --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("deepseek7b", "math", "vineppo")
