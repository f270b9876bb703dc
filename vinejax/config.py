"""Experiment configuration: the full schema with defaults, and validation that names the bad key.

Every config file in `configs/` starts from `base_config()` and changes values; the schema is
locked, so a misspelt key (in the file or on the command line, `--config.train.lrr=1`) fails
at once naming it. `validate` then checks types and combinations before anything heavy runs.
Defaults are the paper's settings (../VINEPPO.md) unless a comment says otherwise.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from vinejax.errors import ConfigError
from vinejax.model.config import LORA_TARGETS
from vinejax.rl import adaptive as adaptive_lib
from vinejax.rl import allocation as allocation_lib
from vinejax.rl.losses import AGGREGATIONS
from vinejax.sharding import MESH_AXES, data_parallel_size, resolve_mesh_shape
from vinejax.tasks.data import SPLITS

STAGES = ("sft", "restem", "dpo_positive")  # algos with a stage of their own; any other is the RL stage's estimator
BASELINES = ("restem", "dpo_positive")  # RL-free baselines: their own sections, not ppo.*
ESTIMATORS = ("vineppo", "ppo", "grpo", "rloo")  # built in (`vinejax.train.estimators`); or "package.module:Name"
ALGORITHMS = ("sft",) + ESTIMATORS + BASELINES


def base_config() -> ml_collections.ConfigDict:
    """The complete, locked schema with default values."""
    c = ml_collections.ConfigDict()
    c.algo = "vineppo"  # sft, restem, dpo_positive, or an RL estimator: vineppo, ppo, grpo, rloo, "pkg.module:Name"
    c.seed = 0  # seeds the problem draw, sampling, MC continuations and the epoch order
    c.output_dir = "runs/default"  # run folder: config.json, metrics.jsonl, samples.jsonl, checkpoints/, hf/
    c.resume = True  # continue from the newest checkpoint in output_dir when there is one
    c.import_dir = ""  # folder searched first for plug-ins "pkg.module:name" (task.name, algo); "" = the config file's

    c.model = ml_collections.ConfigDict()  # the policy: an HF folder, a previous run, or a tiny random Llama
    c.model.hf_path = ""  # HF folder (config.json + safetensors + tokenizer); "" = tiny random model
    c.model.init_from = ""  # a previous run's output_dir (e.g. the SFT stage) to start from
    c.model.tokenizer_path = ""  # "" = hf_path, or the task's own tokenizer for tiny models
    c.model.hidden_size = 128  # tiny random model shape (used when hf_path is "")
    c.model.num_layers = 4  # tiny random model: decoder layers
    c.model.num_heads = 4  # tiny random model: attention heads
    c.model.num_kv_heads = 4  # tiny random model: key/value heads (GQA)
    c.model.intermediate_size = 512  # tiny random model: MLP width
    c.model.max_position_embeddings = 256  # tiny random model: positions
    c.model.dtype = "float32"  # compute dtype; bfloat16 on accelerators
    c.model.param_dtype = "float32"  # parameter (and optimizer moment) dtype
    c.model.remat = False  # recompute activations in the backward pass (gradient checkpointing)
    c.model.lora = ml_collections.ConfigDict()  # low-rank adapters on a frozen base (sft and RL without a critic)
    c.model.lora.rank = 0  # adapter rank r; 0 = off: every weight trains (full fine-tuning)
    c.model.lora.alpha = 16.0  # the update is (alpha / rank)·A·B, as PEFT's lora_alpha
    c.model.lora.target = ("q", "k", "v", "o", "gate", "up", "down")  # adapted projections (any of these)
    c.model.lora.dropout = 0.0  # dropout on the adapters' input while training (PEFT's lora_dropout)
    c.model.context_size = -1  # tokens a prompt + response may hold besides BOS (paper: 2047 Rho, 2499 DeepSeek); -1 = max positions - 1

    c.task = ml_collections.ConfigDict()  # what is solved and how it is graded (vinejax.tasks)
    c.task.name = "arithmetic"  # gsm8k, math, arithmetic, jsonl, or a plug-in "pkg.module:factory" (its Task)
    c.task.data_dir = ""  # local folder laid out like shared/data ("" = the Hub)
    c.task.train_split = "train"  # the split RL and SFT train on
    c.task.num_eval_problems = 500  # the first N problems of each eval split; 0 = the whole split
    c.task.max_prompt_tokens = 1512  # longer prompts are dropped
    c.task.options = ml_collections.ConfigDict()  # the task's own options (grader, files, prompt_template, ...)
    c.task.grade_workers = 2  # processes for sandboxed grading (sympy checks, plug-in graders)
    c.task.chat_template = False  # prompts through the tokenizer's chat template (the paper: raw prompts)

    c.sampling = ml_collections.ConfigDict()  # episodes of an RL iteration (and MC continuations)
    c.sampling.problems_per_iteration = 64  # restem / dpo_positive: 0 = the whole train split (official)
    c.sampling.samples_per_problem = 8  # responses per problem (GRPO/RLOO: the group)
    c.sampling.temperature = 0.6  # also divides the logits of every log-prob in the loss
    c.sampling.top_p = 0.9  # nucleus sampling; 1 = off
    c.sampling.top_k = 0  # 0 = off (applied before top_p)
    c.sampling.max_new_tokens = 1024  # a response writes at most min(this, context - prompt) tokens
    c.sampling.batch_size = 64  # prompts per generate call, rows per scoring call
    c.sampling.decode_rows = 0  # rows decoded at once by generate (RL and eval; slots refilled as rows finish); 0 = every row of a call

    c.vineppo = ml_collections.ConfigDict()  # VinePPO Monte Carlo values
    c.vineppo.num_rollouts = 9  # K: continuations from every state
    c.vineppo.max_estimated_states = -1  # -1 = no cap (MATH); GSM8K: 25 = states 0..25 estimated, later V = R
    c.vineppo.chunk_rows = 512  # continuation rows decoded at once (slots, refilled as rows finish)
    c.vineppo.episodes_per_group = 64  # episodes per MC group (one group's trajectory KV cache on the devices); rounded up to a multiple of samples_per_problem
    c.vineppo.early_start = True  # each MC group decodes as soon as it is sampled; False: every group after the iteration's sampling and log-probs
    c.vineppo.pool_continuations = False  # a continuation that writes the episode's next steps counts for the later states it passes through (rl.pooling; exactly unbiased; fixed K only)
    c.vineppo.rollouts_by_step = ()  # own continuations of the states at step index 0, 1, ... (the last entry: every later state); () = num_rollouts everywhere
    c.vineppo.adaptive = ml_collections.ConfigDict()  # adaptive K (vinejax.rl.adaptive); off = the paper's fixed K
    c.vineppo.adaptive.enabled = False  # adaptive K on (vineppo only)
    c.vineppo.adaptive.round_size = 3  # rollouts per round
    c.vineppo.adaptive.min_rollouts = (3, 9, 12)  # per tier: 0 evidence unanimous, 1 episode rewards agree, 2 otherwise
    c.vineppo.adaptive.max_rollouts = (12, 12, 12)  # per tier: at most this many rollouts
    c.vineppo.adaptive.stop_stderr = 0.0  # stop once sqrt(p(1-p)/n) <= this (n >= min); 0 = unanimous only
    c.vineppo.adaptive.evidence = True  # False: no tiers, every state follows tier 0's rule
    c.vineppo.adaptive.budget_per_state = 0.0  # cap on mean rollouts per distinct state per iteration; 0 = none
    c.vineppo.allocation = ml_collections.ConfigDict()  # budget-global allocation (vinejax.rl.allocation); off = fixed K
    c.vineppo.allocation.enabled = False  # pilot round, then the group's budget where it lowers the advantage error most
    c.vineppo.allocation.pilot = 3  # round-1 rollouts of every distinct state
    c.vineppo.allocation.rollouts_per_state = 4.5  # the budget: mean rollouts per distinct state, pilot included
    c.vineppo.allocation.max_rollouts = 32  # per state, pilot included
    c.vineppo.allocation.stop_settled = 0.9  # P(settled | evidence) from which a unanimous pilot stops (> 1: never)
    c.vineppo.allocation.child_weight = 1.0  # evidence weight of one pilot rollout of a next state
    c.vineppo.allocation.prior_settled = (0.3, 0.3)  # prior chance that a value is exactly 0 / exactly 1
    c.vineppo.allocation.mixed_beta = 1.0  # an unsettled value is Beta(this, this) a priori
    c.vineppo.states = "steps"  # MC states (`train.states`): "steps" (reasoning-step boundaries), "tokens" (every state_interval), "pkg.module:fn"
    c.vineppo.state_interval = 8  # "tokens": response tokens between consecutive states
    c.vineppo.max_states = 0  # cap: keep the first state in each of this many equal token spans of a response; 0 = none

    c.ppo = ml_collections.ConfigDict()  # the PPO-clip update every RL estimator shares, and the critic of ppo
    c.ppo.clip_eps = 0.2  # PPO clip ε (the lower one with clip_eps_high)
    c.ppo.clip_eps_high = 0.0  # upper clip ε_high of asymmetric clipping (DAPO: 0.28); 0 = ppo.clip_eps
    c.ppo.dual_clip = 0.0  # dual-clip constant c > 1 (-A·ρ capped at -c·A for A < 0); 0 = off
    c.ppo.entropy_coef = 0.0  # entropy bonus coefficient (paper: 0, the entropy is only logged)
    c.ppo.loss_aggregation = "token-mean"  # or "seq-mean-token-mean" (GRPO), "seq-mean-token-sum-norm" (Dr. GRPO)
    c.ppo.loss_norm_length = 0  # seq-mean-token-sum-norm's constant length; 0 = sampling.max_new_tokens
    c.ppo.kl_coef = 1e-4  # β (the initial one with adaptive_kl)
    c.ppo.kl_in_reward = False  # PPO: −β·kl_t (k1) in the token rewards instead of β·KL in the loss
    c.ppo.adaptive_kl = False  # the official adaptive controller (PPOHParams adap_kl_ctrl; paper: off)
    c.ppo.kl_target = 6.0  # adaptive controller: target KL per sequence (PPOHParams target)
    c.ppo.kl_horizon = 0  # adaptive controller: horizon in episodes; 0 = official: iterations x episodes x epochs
    c.ppo.kl_estimator = "k3"  # per-token KL to the reference: k1, k2 or k3 (paper: k3)
    c.ppo.kl_clamp = 10.0  # per-token clamp [0, this] of k2 / k3 (paper: k3 in [0, 10]); k1 is never clamped
    c.ppo.epochs = 2  # passes over an iteration's episodes
    c.ppo.episodes_per_step = 64  # global optimizer batch, in episodes
    c.ppo.micro_batch = 16  # episodes per forward/backward (gradient accumulation)
    c.ppo.whiten_advantages = None  # whiten per optimizer batch; None = the estimator's convention (grpo: no)
    c.ppo.token_mean = "batch"  # PPO-clip / value loss: one token mean per step, or "micro_batch" (official)
    c.ppo.max_mean_ratio = 10.0  # a micro-batch whose mean ratio exceeds this adds no loss (official); 0 = off
    c.ppo.gae_gamma = 1.0  # ppo: GAE γ
    c.ppo.gae_lambda = 1.0  # ppo: GAE λ
    c.ppo.value_clip = 0.2  # ppo: critic value clip
    c.ppo.critic_lr = 1e-6  # ppo: critic learning rate

    # RestEM (expert iteration) as the official code runs it (trainers/restem_MATH.jsonnet,
    # math_restem_episode_generator.py, restem_trainer.py): each iteration samples the train
    # problems with the chosen policy, keeps the correct responses and fine-tunes the SFT model
    # afresh on them; candidates are picked on a validation split (early stopping).
    c.restem = ml_collections.ConfigDict()  # RestEM (expert iteration) as the official code runs it
    c.restem.epochs = 8  # passes over the kept responses per iteration
    c.restem.batch_size = 64  # responses per optimizer step (drop_last)
    c.restem.micro_batch = 16  # responses per forward/backward (gradient accumulation)
    c.restem.max_per_problem = 10  # the first N correct responses of a problem; -1 = all
    c.restem.reward_threshold = 1.0  # correct = reward >= this
    c.restem.eval_every_steps = 500  # candidate every N cumulative steps (+ start and end); 0 = start, end
    c.restem.early_stop = "first_decrease"  # official restem_paper_original; "best" = choose_best
    c.restem.select_split = "validation"  # the split candidates are chosen on
    c.restem.num_select_problems = 0  # its first N problems; 0 = all (MATH 500, GSM8K 373)

    # DPO-Positive (DPO+, Smaug) as the official code runs it (trainers/dpo_positive_MATH.jsonnet,
    # math_dpo_positive_episode_generator.py, dpo_positive_trainer.py): one round of samples from
    # the SFT policy, (correct, incorrect) pairs per problem, offline training against the SFT
    # policy as the frozen reference.
    c.dpo = ml_collections.ConfigDict()  # DPO+ (DPO-Positive) as the official code runs it
    c.dpo.beta = 0.1  # MATH 0.1, GSM8K 0.3
    c.dpo.lam = 50.0  # λ of the positive term max(0, r_w − s_w)
    c.dpo.label_smoothing = 0.0  # ε of the conservative DPO loss (paper: 0)
    c.dpo.epochs = 3  # passes over the pairs
    c.dpo.batch_size = 64  # pairs per optimizer step (drop_last)
    c.dpo.micro_batch = 8  # pairs per forward/backward (2 sequences each)
    c.dpo.max_pairs_per_problem = 64  # a uniform random subset when more; -1 = all
    c.dpo.reward_threshold = 0.5  # chosen = reward >= this, rejected = the rest
    c.dpo.max_seq_len = 0  # drop pairs whose prompt + either response is longer; 0 = keep all
    c.dpo.eval_every_steps = 500  # evaluate (and checkpoint) every N steps, plus start and end

    c.optim = ml_collections.ConfigDict()  # AdamW with warmup and linear decay (policy; ppo.critic_lr for the critic)
    c.optim.lr = 1e-6  # peak learning rate
    c.optim.warmup_frac = 0.03  # fraction of the steps in warmup
    c.optim.warmup_shape = "log"  # DeepSpeed WarmupDecayLR's log-shaped warmup (official); or "linear"
    c.optim.b1 = 0.9  # Adam β1
    c.optim.b2 = 0.999  # Adam β2
    c.optim.eps = 1e-8  # Adam ε
    c.optim.weight_decay = 0.0  # AdamW weight decay
    c.optim.grad_clip = 1.0  # global gradient-norm clip

    c.sft = ml_collections.ConfigDict()  # supervised fine-tuning (algo sft)
    c.sft.epochs = 2  # passes over the train split
    c.sft.target_template = "\n{solution}\n"  # the official SFT target (DeepSeekMath on MATH: "\n{solution}")
    c.sft.batch_size = 64  # examples per optimizer step
    c.sft.max_steps = -1  # -1 = epochs decide
    c.sft.max_seq_len = 2048  # longer examples are dropped (official)
    c.sft.micro_batch = 16  # examples per forward/backward (gradient accumulation)

    c.train = ml_collections.ConfigDict()  # the loop: iterations, evaluation, checkpoints, export
    c.train.iterations = 1000  # RL iterations (RestEM rounds; SFT: see sft.epochs)
    c.train.eval_every = 10  # iterations; 0 = never
    c.train.checkpoint_every = 10  # iterations between checkpoints
    c.train.keep_checkpoints = 3  # newest checkpoints kept
    c.train.time_budget_minutes = 0.0  # 0 = no limit; stops cleanly (checkpointed) when exceeded
    c.train.export_hf = True  # write the final policy as an HF folder
    c.train.samples_per_iteration = 4  # episodes appended to samples.jsonl each iteration (0 = none)
    c.train.max_nonfinite_steps = 3  # stop after this many optimizer steps in a row with a non-finite loss/gradient
    c.train.kl_warning = 10.0  # warn when the KL to the reference (nats per sequence) exceeds this
    c.train.overlap_host_work = True  # grade / split steps on a host thread while the devices work (time/host_wait)

    c.export = ml_collections.ConfigDict()  # the final policy's HF folder (train.export_hf)
    c.export.dtype = ""  # weight dtype written; "" = the starting checkpoint's own (random init: model.param_dtype)

    c.logging = ml_collections.ConfigDict()  # TensorBoard (when installed) and Weights & Biases
    c.logging.wandb_project = ""  # "" = no Weights & Biases (pip install -e '.[wandb]')
    c.logging.wandb_entity = ""  # W&B entity ("" = your default)
    c.logging.wandb_run_name = ""  # "" = the output_dir's name

    c.eval = ml_collections.ConfigDict()  # the official protocol (vinejax.train.evaluate)
    c.eval.splits = ("validation",)  # the first one's metrics are eval/accuracy...; others eval/<split>/...
    c.eval.samples_per_problem = 16  # samples per problem (official: 16)
    c.eval.temperature = 0.35  # official: 0.35
    c.eval.top_p = 0.9  # official: 0.9
    c.eval.greedy = True  # also greedy accuracy (not in the official protocol; False in paper configs)
    c.eval.max_new_tokens = 1024  # a response may write min(this, eval context - prompt) tokens
    c.eval.context_size = -1  # prompt + response tokens besides BOS at eval; -1 = model.context_size

    c.mesh = ml_collections.ConfigDict()  # devices: the (data, fsdp, tensor) mesh and several processes
    c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.mesh.distributed = False  # call jax.distributed.initialize() (multi-host TPU/GPU; docs/scaling.md)
    c.mesh.coordinator_address = ""  # "host:port" of process 0; "" = JAX detects it (TPU, SLURM, Open MPI, k8s)
    c.mesh.num_processes = 0  # 0 = detected
    c.mesh.process_id = -1  # this process's rank; -1 = detected

    c.lock()
    c.task.options.unlock()
    return c


_CHOICES = {
    "ppo.kl_estimator": ("k1", "k2", "k3"),
    "ppo.loss_aggregation": AGGREGATIONS,
    "restem.early_stop": ("first_decrease", "best"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "export.dtype": ("", "float32", "bfloat16", "float16"),
    "optim.warmup_shape": ("log", "linear"),
}


def _flatten(d, prefix=""):
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and key != "options":
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def key_docs() -> dict[str, str]:
    """{dotted key or section: its one-line doc}, in schema order: the comment on its line in
    `base_config` (the schema's comments are the documentation; `config_file.help_text` prints them)."""
    import inspect
    import io
    import re
    import tokenize

    source = inspect.getsource(base_config)
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    docs = {}
    for number, line in enumerate(source.splitlines(), start=1):
        match = re.match(r"\s*c\.([\w.]+)\s*=", line)
        if match:
            docs[match.group(1)] = comments.get(number, "")
    return docs


def flat_keys(cfg: ml_collections.ConfigDict) -> list[str]:
    """Every dotted key of `cfg` (free-form `task.options` counts as one key)."""
    return [name for name, _ in _flatten(cfg)]


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> ml_collections.ConfigDict:
    """Check keys, types and combinations; raise ConfigError naming the first bad key."""
    defaults = dict(_flatten(base_config()))
    given = dict(_flatten(cfg))
    for name in given:
        if name not in defaults:
            raise ConfigError(f"config key {name!r} is unknown (not in vinejax.config.base_config)")
    for name, default in defaults.items():
        if name not in given:
            raise ConfigError(f"config key {name!r} is missing")
        value = given[name]
        if default is None:  # true / false / None (None: a default decided elsewhere)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"config key {name!r} must be true, false or None, got {value!r}")
            continue
        if isinstance(default, bool) != isinstance(value, bool):
            raise ConfigError(f"config key {name!r} must be a bool, got {value!r}")
        if isinstance(default, float) and not isinstance(value, (int, float)):
            raise ConfigError(f"config key {name!r} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
            raise ConfigError(f"config key {name!r} must be an integer, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"config key {name!r} must be a string, got {value!r}")
    for name, choices in _CHOICES.items():
        if given[name] not in choices:
            raise ConfigError(f"config key {name!r} is {given[name]!r}; choose one of {', '.join(choices)}")

    def need(ok: bool, key: str, why: str):
        if not ok:
            raise ConfigError(f"config key {key!r}: {why} (got {given[key]!r})")

    need(cfg.vineppo.num_rollouts >= 1, "vineppo.num_rollouts", "K must be >= 1")
    validate_lora(cfg, need)
    need(cfg.vineppo.chunk_rows >= 1, "vineppo.chunk_rows", "must be >= 1")
    need(cfg.vineppo.episodes_per_group >= 1, "vineppo.episodes_per_group", "must be >= 1")
    need(cfg.sampling.decode_rows >= 0, "sampling.decode_rows", "must be >= 0 (0 = every row of a generate call)")
    need(cfg.sampling.batch_size >= 1, "sampling.batch_size", "must be >= 1")
    if cfg.vineppo.adaptive.enabled:
        a = cfg.vineppo.adaptive
        need(len(a.min_rollouts) == len(a.max_rollouts) >= 1, "vineppo.adaptive.min_rollouts",
             "needs one entry per tier, as many as vineppo.adaptive.max_rollouts")
        need(a.budget_per_state == 0 or a.budget_per_state >= a.round_size, "vineppo.adaptive.budget_per_state",
             "must be 0 (no cap) or at least vineppo.adaptive.round_size (the first round)")
        try:
            adaptive_lib.validate(adaptive_lib.AdaptiveConfig(rules=adaptive_rules(cfg)))
        except ValueError as e:
            raise ConfigError(f"config key 'vineppo.adaptive': {e}") from None
    need(cfg.vineppo.state_interval >= 1, "vineppo.state_interval", "must be >= 1")
    need(cfg.vineppo.max_states >= 0, "vineppo.max_states", "must be >= 0 (0 = no cap)")
    by_step = cfg.vineppo.rollouts_by_step
    need(all(isinstance(k, int) and k >= 1 for k in by_step), "vineppo.rollouts_by_step",
         "must be integers >= 1 (continuations of the states at step index 0, 1, ...; () = vineppo.num_rollouts)")
    need(not (by_step and (cfg.vineppo.adaptive.enabled or cfg.vineppo.allocation.enabled)), "vineppo.rollouts_by_step",
         "works with fixed K only: turn off vineppo.adaptive.enabled and vineppo.allocation.enabled")
    need(not (cfg.vineppo.pool_continuations and (cfg.vineppo.adaptive.enabled or cfg.vineppo.allocation.enabled)),
         "vineppo.pool_continuations", "works with fixed K only (their rollout counts read draws that pooling would reuse): "
         "turn off vineppo.adaptive.enabled and vineppo.allocation.enabled")
    if cfg.vineppo.allocation.enabled:
        need(not cfg.vineppo.adaptive.enabled, "vineppo.allocation.enabled",
             "allocation and vineppo.adaptive are two ways of choosing rollout counts: enable one")
        need(len(cfg.vineppo.allocation.prior_settled) == 2, "vineppo.allocation.prior_settled",
             "must be two probabilities (exactly 0, exactly 1)")
        for field, why in allocation_lib.problems(allocation_config(cfg))[:1]:
            need(False, f"vineppo.allocation.{field}", why)
    need(cfg.sampling.temperature > 0, "sampling.temperature", "must be > 0")
    need(0 < cfg.sampling.top_p <= 1, "sampling.top_p", "must be in (0, 1]")
    need(cfg.sampling.max_new_tokens >= 1, "sampling.max_new_tokens", "must be >= 1")
    need(len(cfg.eval.splits) >= 1 and all(s in SPLITS for s in cfg.eval.splits), "eval.splits",
         f'must name splits among {", ".join(SPLITS)}, e.g. ("test", "validation")')
    need(cfg.eval.samples_per_problem >= 0, "eval.samples_per_problem", "must be >= 0")
    need(cfg.eval.temperature > 0, "eval.temperature", "must be > 0")
    need(0 < cfg.eval.top_p <= 1, "eval.top_p", "must be in (0, 1]")
    need(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    need(cfg.ppo.epochs >= 1, "ppo.epochs", "must be >= 1")
    need(cfg.ppo.kl_target > 0, "ppo.kl_target", "must be > 0")
    need(cfg.ppo.clip_eps_high >= 0, "ppo.clip_eps_high", "must be >= 0 (0 = ppo.clip_eps)")
    need(cfg.ppo.dual_clip == 0 or cfg.ppo.dual_clip > 1, "ppo.dual_clip", "must be 0 (off) or > 1")
    need(cfg.ppo.loss_norm_length >= 0, "ppo.loss_norm_length", "must be >= 0 (0 = sampling.max_new_tokens)")
    need(cfg.ppo.kl_horizon >= 0, "ppo.kl_horizon", "must be >= 0 (0 = all episodes of training x epochs)")
    need(cfg.optim.lr > 0, "optim.lr", "must be > 0")
    need(0 <= cfg.optim.warmup_frac < 1, "optim.warmup_frac", "must be in [0, 1)")
    need(cfg.train.iterations >= 0, "train.iterations", "must be >= 0")
    need(cfg.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1")
    need(cfg.train.samples_per_iteration >= 0, "train.samples_per_iteration", "must be >= 0")
    episodes = cfg.sampling.problems_per_iteration * cfg.sampling.samples_per_problem
    need(cfg.algo in BASELINES or episodes % cfg.ppo.episodes_per_step == 0, "ppo.episodes_per_step",
         f"must divide the {episodes} episodes of an iteration")
    need(cfg.sampling.problems_per_iteration >= (0 if cfg.algo in BASELINES else 1),
         "sampling.problems_per_iteration", "must be >= 1 (0 = the whole split: restem / dpo_positive only)")
    if cfg.algo in BASELINES:
        validate_baselines(cfg, need)
    need(cfg.ppo.token_mean in ("batch", "micro_batch"), "ppo.token_mean",
         f"must be 'batch' or 'micro_batch', not {cfg.ppo.token_mean!r}")
    need(cfg.ppo.episodes_per_step % cfg.ppo.micro_batch == 0, "ppo.micro_batch",
         f"must divide ppo.episodes_per_step={cfg.ppo.episodes_per_step}")
    need(cfg.sft.batch_size % cfg.sft.micro_batch == 0, "sft.micro_batch",
         f"must divide sft.batch_size={cfg.sft.batch_size}")
    need(len(cfg.mesh.shape) == 3, "mesh.shape", "must be (data, fsdp, tensor)")
    _validate_processes(cfg.mesh, need)
    if num_devices is not None:
        try:
            shape = resolve_mesh_shape(cfg.mesh.shape, num_devices)
        except ValueError as error:
            raise ConfigError(f"config key 'mesh.shape': {error}") from None
        data = data_parallel_size(dict(zip(MESH_AXES, shape)))
        need(cfg.ppo.micro_batch % data == 0, "ppo.micro_batch",
             f"must be divisible by the data-parallel size {data} (mesh data x fsdp)")
        need(cfg.sft.micro_batch % data == 0, "sft.micro_batch",
             f"must be divisible by the data-parallel size {data} (mesh data x fsdp)")
        need(cfg.sampling.batch_size % data == 0, "sampling.batch_size",
             f"must be divisible by the data-parallel size {data}")
        for key in ("restem.micro_batch", "dpo.micro_batch") if cfg.algo in BASELINES else ():
            need(given[key] % data == 0, key, f"must be divisible by the data-parallel size {data} (mesh data x fsdp)")
    if cfg.algo != "sft":
        need(cfg.model.hf_path != "" or cfg.model.init_from != "" or cfg.task.name == "arithmetic",
             "model.init_from", "RL needs a starting policy: an SFT run dir or an HF folder")
    if cfg.algo not in STAGES:  # the RL stage: the estimator checks its own settings
        from vinejax.train.estimators import get_estimator
        from vinejax.train.states import state_function

        state_function(cfg.vineppo.states, cfg.import_dir)  # a user's state rule loads, or one line

        critic = get_estimator(cfg).uses_critic
        need(not (critic and cfg.model.lora.rank > 0), "model.lora.rank",
             f"algo {cfg.algo!r} trains a critic, a whole copy of the model: use LoRA with vineppo, grpo or rloo")
    return cfg


def validate_lora(cfg, need) -> None:
    """The `model.lora` section (checked whatever the rank: a bad value is a bad value)."""
    lo = cfg.model.lora
    need(lo.rank >= 0, "model.lora.rank", "must be >= 0 (0 = off: full fine-tuning)")
    need(lo.alpha > 0, "model.lora.alpha", "must be > 0")
    need(0 <= lo.dropout < 1, "model.lora.dropout", "must be in [0, 1)")
    target = lo.target
    need(isinstance(target, (tuple, list)) and len(target) > 0 and all(t in LORA_TARGETS for t in target)
         and len(set(target)) == len(target), "model.lora.target",
         f"must name distinct projections among {', '.join(LORA_TARGETS)}, e.g. ('q', 'v')")
    if lo.rank > 0:
        need(cfg.algo not in BASELINES, "model.lora.rank",
             f"LoRA trains sft and RL stages; {cfg.algo} fine-tunes whole models (set model.lora.rank=0)")


def validate_baselines(cfg, need) -> None:
    """The `restem` and `dpo` sections (checked when `algo` is one of BASELINES)."""
    r, d = cfg.restem, cfg.dpo
    need(r.epochs >= 1, "restem.epochs", "must be >= 1")
    need(r.batch_size >= 1, "restem.batch_size", "must be >= 1")
    need(r.micro_batch >= 1 and r.batch_size % r.micro_batch == 0, "restem.micro_batch",
         f"must divide restem.batch_size={r.batch_size}")
    need(r.max_per_problem == -1 or r.max_per_problem >= 1, "restem.max_per_problem", "must be >= 1 or -1 (all)")
    need(r.eval_every_steps >= 0, "restem.eval_every_steps", "must be >= 0")
    need(r.num_select_problems >= 0, "restem.num_select_problems", "must be >= 0 (0 = the whole split)")
    need(d.beta > 0, "dpo.beta", "must be > 0")
    need(d.lam >= 0, "dpo.lam", "must be >= 0")
    need(0 <= d.label_smoothing < 0.5, "dpo.label_smoothing", "must be in [0, 0.5)")
    need(d.epochs >= 1, "dpo.epochs", "must be >= 1")
    need(d.batch_size >= 1, "dpo.batch_size", "must be >= 1")
    need(d.micro_batch >= 1 and d.batch_size % d.micro_batch == 0, "dpo.micro_batch",
         f"must divide dpo.batch_size={d.batch_size}")
    need(d.max_pairs_per_problem == -1 or d.max_pairs_per_problem >= 1, "dpo.max_pairs_per_problem",
         "must be >= 1 or -1 (all)")
    need(d.max_seq_len >= 0, "dpo.max_seq_len", "must be >= 0 (0 = no limit)")
    need(d.eval_every_steps >= 0, "dpo.eval_every_steps", "must be >= 0")
    need(cfg.algo != "dpo_positive" or cfg.sampling.samples_per_problem >= 2, "sampling.samples_per_problem",
         "DPO+ pairs need >= 2 samples per problem")
    need(cfg.algo != "dpo_positive" or cfg.train.iterations == 1, "train.iterations",
         "DPO+ is one offline round (official total_num_iterations 1)")


def _validate_processes(mesh, need) -> None:
    """The mesh.* keys of a multi-process run (set only with mesh.distributed)."""
    for key, unset in (("coordinator_address", ""), ("num_processes", 0), ("process_id", -1)):
        need(mesh.distributed or mesh[key] == unset, f"mesh.{key}", "is only used with mesh.distributed=true")
    host, _, port = mesh.coordinator_address.rpartition(":")
    need(mesh.coordinator_address == "" or (host != "" and port.isdigit() and 0 < int(port) < 65536),
         "mesh.coordinator_address", "must be host:port")
    need(mesh.num_processes >= 0, "mesh.num_processes", "must be >= 1 (0 = detected)")
    need(mesh.process_id >= -1, "mesh.process_id", "must be >= 0 (-1 = detected)")
    need(mesh.process_id < mesh.num_processes or mesh.num_processes == 0, "mesh.process_id",
         f"must be below mesh.num_processes={mesh.num_processes}")


def max_value_step(cfg: ml_collections.ConfigDict) -> int | None:
    """The last estimated state of `vineppo.max_estimated_states` (-1 = no cap: None)."""
    cap = cfg.vineppo.max_estimated_states
    return None if cap < 0 else int(cap)


def adaptive_config(cfg: ml_collections.ConfigDict):
    """`rl.adaptive.AdaptiveConfig` of `vineppo.adaptive` (one rule per tier; tier 0's only when
    `evidence` is off), or None when adaptive K is off."""
    a = cfg.vineppo.adaptive
    if not a.enabled:
        return None
    rules = adaptive_rules(cfg)
    return adaptive_lib.AdaptiveConfig(rules=rules if a.evidence else rules[:1])


def allocation_config(cfg: ml_collections.ConfigDict):
    """`rl.allocation.AllocationConfig` of `vineppo.allocation`, or None when it is off."""
    a = cfg.vineppo.allocation
    if not a.enabled:
        return None
    return allocation_lib.AllocationConfig(
        pilot=int(a.pilot), rollouts_per_state=float(a.rollouts_per_state), max_rollouts=int(a.max_rollouts),
        stop_settled=float(a.stop_settled), child_weight=float(a.child_weight),
        prior_settled=tuple(float(x) for x in a.prior_settled), mixed_beta=float(a.mixed_beta))


def adaptive_rules(cfg: ml_collections.ConfigDict) -> tuple:
    """The `rl.adaptive.Rule` of every tier of `vineppo.adaptive` (used or not)."""
    a = cfg.vineppo.adaptive
    return tuple(adaptive_lib.Rule(int(a.round_size), int(mn), int(mx), float(a.stop_stderr))
                 for mn, mx in zip(a.min_rollouts, a.max_rollouts))


def to_dict(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Plain nested dict (for JSON logs)."""
    return cfg.to_dict()


def from_dict(raw: dict) -> tuple[ml_collections.ConfigDict, list[str]]:
    """`base_config()` with the values of a nested dict (a run's recorded config.json; JSON
    lists become tuples where the schema has tuples) and the dotted keys it skipped for not
    being in the schema (settings of an older version)."""
    cfg, skipped = base_config(), []

    def fill(node, values: dict, prefix: str) -> None:
        for key, value in values.items():
            name = prefix + key
            if key not in node:
                skipped.append(name)
            elif key == "options" and isinstance(value, dict):
                with node[key].unlocked():
                    node[key].update(value)
            elif isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
                fill(node[key], value, name + ".")
            else:
                node[key] = tuple(value) if isinstance(node[key], tuple) and isinstance(value, list) else value

    fill(cfg, raw, "")
    return cfg, skipped


# The paper's models (VINEPPO.md §6) and per-task settings (§1, §2, §5).
PAPER_MODELS = {
    # context_size: official `model_context_size` of MC continuations; micro_batch: the official
    # per-device group (the ratio > 10 rule zeroes one group's loss).
    "rho1b": dict(context_size=2047, sft_lr=1e-5, micro_batch=16, mesh=(1, -1, 1)),
    "deepseek7b": dict(context_size=2499, sft_lr=5e-5, micro_batch=8, mesh=(1, -1, 1)),
    # Beyond the paper: Qwen3 base models with the settings of the paper model of their size
    # (1.7B as RhoMath-1.1B, 8B as DeepSeekMath-7B).
    "qwen3-1.7b": dict(context_size=2047, sft_lr=1e-5, micro_batch=16, mesh=(1, -1, 1)),
    "qwen3-8b": dict(context_size=2499, sft_lr=5e-5, micro_batch=8, mesh=(1, -1, 1)),
}
# The official evaluation (configs/sft_*_eval.jsonnet): its model_context_size per (model, task),
# and the checkpoint cadence it sweeps (save_steps, in iterations) per (model, algo).
PAPER_EVAL_CONTEXT = {("rho1b", "gsm8k"): 2047, ("rho1b", "math"): 2047,
                      ("deepseek7b", "gsm8k"): 2047, ("deepseek7b", "math"): 4095,
                      ("qwen3-1.7b", "gsm8k"): 2047, ("qwen3-1.7b", "math"): 2047,
                      ("qwen3-8b", "gsm8k"): 2047, ("qwen3-8b", "math"): 4095}
PAPER_EVAL_EVERY = {("rho1b", "vineppo"): 10, ("deepseek7b", "vineppo"): 10, ("qwen3-1.7b", "vineppo"): 10,
                    ("qwen3-8b", "vineppo"): 10, ("rho1b", "ppo"): 40, ("deepseek7b", "ppo"): 30,
                    ("qwen3-1.7b", "ppo"): 40, ("qwen3-8b", "ppo"): 30}


def paper_config(model: str, task: str, algo: str) -> ml_collections.ConfigDict:
    """A paper run: `model` in PAPER_MODELS, `task` gsm8k|math, `algo` vineppo|ppo|sft|restem|dpo_positive.

    The HF folder is given on the command line: `--config.model.hf_path=/path/to/model` (an SFT
    checkpoint for RL, the base model for SFT) and `--config.task.data_dir=../shared/data`.
    """
    c = base_config()
    m = PAPER_MODELS[model]
    c.algo = algo
    c.output_dir = f"runs/{task}_{model}_{algo}"
    c.task.name = task
    c.task.train_split = "train"
    c.task.num_eval_problems = 0
    c.eval.splits = ("test", "validation")  # the official eval pipelines the paper reports (test first)
    c.eval.greedy = False
    c.eval.context_size = PAPER_EVAL_CONTEXT[model, task]
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.mesh.shape = m["mesh"]
    c.sampling.max_new_tokens = 1024
    c.model.context_size = m["context_size"]
    c.sft.max_seq_len = 2048
    c.sft.epochs = 2
    if model == "deepseek7b" and task == "math":
        c.sft.target_template = "\n{solution}"
    c.ppo.micro_batch = m["micro_batch"]
    c.ppo.token_mean = "micro_batch"  # the official per-device token mean, then the mean over devices
    c.sft.micro_batch = 8
    c.train.iterations = 650 if task == "gsm8k" else 1000
    c.train.eval_every = PAPER_EVAL_EVERY.get((model, algo), 10)  # SFT: evaluated once, at its end
    c.train.checkpoint_every = 10
    c.vineppo.max_estimated_states = 25 if task == "gsm8k" else -1
    if model == "deepseek7b":  # 0.47 MiB of KV cache per token: decodes sized to fit 8 x 80 GiB (docs/scaling.md)
        c.sampling.decode_rows = 32  # generate's rows at once
        c.vineppo.chunk_rows = 32  # MC continuation slots
    if algo == "sft":
        c.optim.lr = m["sft_lr"]
        c.sft.batch_size = 64
    if algo in BASELINES:
        paper_baseline(c, model, task)
    return c


def paper_baseline(c: ml_collections.ConfigDict, model: str, task: str) -> None:
    """RestEM / DPO+ settings of the official configs (polIter_*_{restem,dpo_positive}_*.jsonnet)."""
    c.sampling.problems_per_iteration = 0  # dataset_portion 1.0: the whole train split
    c.train.eval_every = 1
    c.restem.micro_batch = 8
    c.dpo.micro_batch = 8
    if c.algo == "restem":
        c.train.iterations = 10
        c.sampling.samples_per_problem = 8
    else:  # dpo_positive: one offline round
        c.train.iterations = 1
        c.sampling.samples_per_problem = 64  # trainers/64_samples.jsonnet
        c.dpo.beta = 0.3 if task == "gsm8k" else 0.1  # dpo_b_0.3 / dpo_b_0.1.jsonnet
        c.dpo.max_seq_len = 2499 if model == "deepseek7b" else 0  # the official max_sequence_length filter
        c.dpo.eval_every_steps = 450 if model == "deepseek7b" else 500  # save_steps
        c.train.checkpoint_every = c.dpo.eval_every_steps  # DPO+ counts checkpoints in steps
        c.sampling.batch_size = 8  # prompts per generate call: 8 x 64 samples = 512 rows
