"""Paper baseline: RestEM with rho1b on math, as the official polIter_rho1bSft2_restem_MATH.jsonnet
runs it (settings in vinejax.config.paper_baseline). Start from the SFT model and give the data:

    python experiments/run.py --config configs/math_rho1b_restem.py \
        --config.model.hf_path=/path/to/sft_model --config.task.data_dir=../shared/data
"""
from vinejax.config import paper_config


def get_config():
    return paper_config("rho1b", "math", "restem")
