"""SFT of a tiny Llama from scratch on the synthetic arithmetic task (noisy demonstrations).

The first stage of `make run`; its exported policy (runs/arith_sft/hf) is where
configs/arith_vineppo.py and configs/arith_ppo.py start.
"""
from vinejax.config import base_config


def arithmetic_task(c):
    """Task settings shared by every arithmetic config."""
    c.task.name = "arithmetic"
    o = c.task.options  # vinejax.tasks.arithmetic.ArithmeticConfig fields
    o.num_operations = 3
    o.start_range = (2, 20)
    o.add_range = (1, 20)
    o.mul_range = (2, 3)
    o.max_value = 99
    o.slip_rate = 0.6  # demonstrations drop a carry 60% of the time: a misconception to unlearn
    o.slip_kind = "carry"
    o.seed = 0
    c.task.num_eval_problems = 500
    c.task.max_prompt_tokens = 64
    c.sampling.max_new_tokens = 80
    c.eval.max_new_tokens = 80
    c.model.max_position_embeddings = 192
    c.sft.target_template = "{solution}"  # the prompt "{problem}\n" already ends the line
    c.optim.warmup_shape = "linear"
    return c


def get_config():
    c = arithmetic_task(base_config())
    c.algo = "sft"
    c.output_dir = "runs/arith_sft"
    c.sft.epochs = 3
    c.sft.max_steps = 600  # ~2 epochs of the 20k problems: ~45% held-out accuracy, room for RL
    c.sft.batch_size = 64
    c.sft.max_seq_len = 192
    c.sft.micro_batch = 64
    c.optim.lr = 3e-3
    c.optim.warmup_frac = 0.05
    c.optim.weight_decay = 0.0
    c.train.checkpoint_every = 200
    c.train.eval_every = 1
    c.eval.samples_per_problem = 4
    c.sampling.batch_size = 256
    return c
