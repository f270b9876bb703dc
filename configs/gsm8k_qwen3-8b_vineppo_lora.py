"""Beyond the paper: VinePPO of Qwen3-8B-Base on gsm8k with the paper's DeepSeekMath-7B settings
(configs/gsm8k_qwen3-8b_vineppo.py) and LoRA as configs/gsm8k_deepseek7b_vineppo_lora.py sets it
(bf16 frozen base = KL reference, rank-64 float32 adapters on every projection, 10x the learning rate):

    python experiments/run.py --config configs/gsm8k_qwen3-8b_vineppo_lora.py \
        --config.model.init_from=runs/gsm8k_qwen3-8b_sft --config.task.data_dir=../shared/data
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gsm8k_deepseek7b_vineppo_lora import lora  # noqa: E402

from vinejax.config import paper_config  # noqa: E402


def get_config():
    return lora(paper_config("qwen3-8b", "gsm8k", "vineppo"))
