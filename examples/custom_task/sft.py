"""SFT of a tiny Llama on the ledger task (ledger.py, a plug-in task), the first stage."""
from vinejax.config import base_config


def ledger_task(c):
    """Task settings shared by the example's configs."""
    c.task.name = "ledger:task"  # ledger.py in this folder (the config file's folder is importable)
    c.task.num_eval_problems = 100
    c.task.max_prompt_tokens = 32
    c.model.max_position_embeddings = 128
    c.sampling.max_new_tokens = 64
    c.eval.max_new_tokens = 64
    c.eval.samples_per_problem = 4
    c.sft.target_template = "{solution}"  # the prompt "{problem}\n" already ends the line
    c.optim.warmup_shape = "linear"
    return c


def get_config():
    c = ledger_task(base_config())
    c.algo = "sft"
    c.output_dir = "runs/ledger_sft"
    c.sft.epochs = 8
    c.sft.batch_size = 64
    c.sft.micro_batch = 64
    c.sft.max_seq_len = 128
    c.optim.lr = 3e-3
    c.optim.warmup_frac = 0.05
    c.train.eval_every = 1
    c.sampling.batch_size = 128
    return c
