"""Beyond the paper: the paper's VinePPO setting for DeepSeekMath-7B on gsm8k (configs/gsm8k_deepseek7b_vineppo.py)
with LoRA, for a single-host TPU VM (v4-8, v5e-8) or fewer GPUs: the base stays frozen in bf16 and
is also the KL reference (adapters off), only the rank-64 adapters on every projection and their
Adam state (float32) train and are checkpointed. The export is the merged model (`hf/`, the
family's format and dtype) and a PEFT adapter folder (`adapter/`).

    python experiments/run.py --config configs/gsm8k_deepseek7b_vineppo_lora.py \
        --config.model.init_from=runs/gsm8k_deepseek7b_sft --config.task.data_dir=../shared/data

Plan it first: `python -m vinejax.tools.plan --config configs/gsm8k_deepseek7b_vineppo_lora.py --target v5e-8`
(the TPU compiler, ahead of time; `make libtpu`, PYTHONPATH=.libtpu). docs/scaling.md ("LoRA plans"):
every program fits a v4-8 and a v5e-8 at the sizes below.
"""
from vinejax.config import paper_config


def lora(c, rank: int = 64, alpha: float = 128.0, lr: float = 1e-5):
    """LoRA on a paper config `c`: a bf16 base, adapters of `rank` on every projection, and the
    learning rate `lr` (10x the paper's full fine-tuning 1e-6: LoRA's optimum sits about 10x higher)."""
    c.output_dir += "_lora"
    c.model.param_dtype = "bfloat16"  # the frozen base; adapters and their optimizer state are float32
    c.model.lora.rank = rank
    c.model.lora.alpha = alpha
    c.optim.lr = lr
    # sized for a single-host TPU VM (v5e-8: 16 GiB a chip; the TPU compiler's plans in
    # docs/scaling.md): how much is decoded or scored at once, not what is computed (the episodes,
    # MC values and losses do not depend on these: tests/test_train_loop.py, "do not depend on how the
    # work is batched")
    c.sampling.batch_size = 8  # prompts per generate call (x samples_per_problem rows), rows per scoring call
    c.sampling.decode_rows = 16  # rows decoding at once, refilled as they finish
    c.vineppo.episodes_per_group = 16  # episodes whose trajectory cache the MC phase holds at once
    c.vineppo.chunk_rows = 16  # MC continuations decoding at once
    return c


def get_config():
    return lora(paper_config("deepseek7b", "gsm8k", "vineppo"))
