"""Configs validate when loaded and name the bad key; every shipped config loads and validates."""
import glob
import importlib.util
import os
import subprocess
import sys

import ml_collections
import pytest

from vinejax.config import ConfigError, base_config, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_file(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))), ids=os.path.basename)
def test_shipped_configs_validate(path):
    cfg = load_config_file(path)
    if cfg.algo != "sft" and cfg.task.name != "arithmetic":
        cfg.model.hf_path = "/some/sft/model"  # given on the command line in real use
    validate(cfg, num_devices=8)


def test_unknown_key_is_named():
    cfg = base_config()
    with pytest.raises(AttributeError, match="lrr"):
        cfg.optim.lrr = 1.0


@pytest.mark.parametrize("key,value,message", [
    ("vineppo.num_rollouts", 0, "vineppo.num_rollouts"),
    ("sampling.top_p", 1.5, "sampling.top_p"),
    ("algo", "dpo", "algo"),
    ("ppo.kl_estimator", "k4", "ppo.kl_estimator"),
    ("ppo.episodes_per_step", 48, "ppo.episodes_per_step"),  # does not divide 512 episodes
    ("ppo.micro_batch", 24, "ppo.micro_batch"),  # does not divide 64
    ("mesh.shape", (4, 4, 1), "mesh.shape"),  # 16 devices > 8
])
def test_impossible_values_name_the_key(key, value, message):
    cfg = base_config()
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(cfg, num_devices=8)


def test_micro_batch_must_split_over_data_axes():
    cfg = base_config()
    cfg.mesh.shape = (8, 1, 1)
    cfg.ppo.micro_batch = 4
    with pytest.raises(ConfigError, match="ppo.micro_batch.*data-parallel size 8"):
        validate(cfg, num_devices=8)


def test_wrong_type_is_named():
    cfg = base_config()
    with pytest.raises(TypeError, match="iterations"):
        cfg.train.iterations = "many"  # ml_collections type-checks assignments
    raw = base_config().to_dict()  # a config assembled from plain dicts is checked by validate
    raw["train"]["iterations"] = 2.5
    with pytest.raises(ConfigError, match="train.iterations.*integer"):
        validate(ml_collections.ConfigDict(raw))


def test_cli_override_of_unknown_key_fails_naming_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "run.py"), "--config",
         os.path.join(ROOT, "configs", "arith_vineppo.py"), "--config.train.lrr=2e-6",
         f"--config.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "lrr" in proc.stderr + proc.stdout


def test_cli_missing_model_folder_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "run.py"), "--config",
         os.path.join(ROOT, "configs", "gsm8k_rho1b_vineppo.py"), f"--config.model.hf_path={missing}",
         f"--config.output_dir={tmp_path / 'out'}", "--config.mesh.shape=(1,1,1)"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0
    assert str(missing) in proc.stderr + proc.stdout


@pytest.mark.parametrize("algo,key,value,message", [
    ("restem", "restem.micro_batch", 24, "restem.micro_batch"),  # does not divide 64
    ("restem", "restem.max_per_problem", 0, "restem.max_per_problem"),
    ("restem", "restem.early_stop", "last", "restem.early_stop"),
    ("restem", "restem.eval_every_steps", -1, "restem.eval_every_steps"),
    ("restem", "sampling.problems_per_iteration", -1, "sampling.problems_per_iteration"),
    ("dpo_positive", "dpo.beta", 0.0, "dpo.beta"),
    ("dpo_positive", "dpo.micro_batch", 5, "dpo.micro_batch"),
    ("dpo_positive", "dpo.max_pairs_per_problem", -2, "dpo.max_pairs_per_problem"),
    ("dpo_positive", "dpo.label_smoothing", 0.5, "dpo.label_smoothing"),
    ("dpo_positive", "sampling.samples_per_problem", 1, "sampling.samples_per_problem"),
    ("dpo_positive", "train.iterations", 2, "train.iterations"),
    ("vineppo", "sampling.problems_per_iteration", 0, "sampling.problems_per_iteration"),  # 0 = all: baselines only
])
def test_baseline_values_name_the_key(algo, key, value, message):
    cfg = base_config()
    cfg.algo = algo
    cfg.train.iterations = 1
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(cfg, num_devices=8)


def test_baselines_take_any_number_of_problems_and_split_micro_batches_over_data():
    cfg = base_config()
    cfg.algo = "restem"
    cfg.sampling.problems_per_iteration = 0  # the whole split; no ppo.episodes_per_step rule
    validate(cfg, num_devices=8)
    cfg.mesh.shape = (8, 1, 1)
    cfg.restem.batch_size, cfg.restem.micro_batch = 64, 4
    with pytest.raises(ConfigError, match="restem.micro_batch.*data-parallel size 8"):
        validate(cfg, num_devices=8)


@pytest.mark.parametrize("changes,message", [
    ({"process_id": 0}, r"mesh\.process_id.*only used with mesh\.distributed"),
    ({"distributed": True, "coordinator_address": "10.0.0.1"}, r"mesh\.coordinator_address.*host:port"),
    ({"distributed": True, "coordinator_address": "10.0.0.1:99999"}, r"mesh\.coordinator_address.*host:port"),
    ({"distributed": True, "num_processes": -2}, r"mesh\.num_processes"),
    ({"distributed": True, "num_processes": 2, "process_id": 2}, r"mesh\.process_id.*below mesh\.num_processes=2"),
])
def test_process_keys_are_checked(changes, message):
    cfg = base_config()
    cfg.mesh.update(changes)
    with pytest.raises(ConfigError, match=message):
        validate(cfg, num_devices=8)


def test_distributed_initialize_gets_only_the_keys_set(monkeypatch):
    import jax

    from vinejax import multihost

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    cfg = base_config()
    multihost.initialize(cfg.mesh)  # distributed=False: nothing
    cfg.mesh.distributed = True
    validate(cfg, num_devices=8)
    multihost.initialize(cfg.mesh)  # all detected by JAX (TPU VM, SLURM, ...)
    cfg.mesh.update({"coordinator_address": "node0:1234", "num_processes": 4, "process_id": 3})
    validate(cfg, num_devices=8)
    multihost.initialize(cfg.mesh)
    assert calls == [{}, {"coordinator_address": "node0:1234", "num_processes": 4, "process_id": 3}]


def test_command_line_strings_read_as_python_string_literals():
    from vinejax.config_file import apply_overrides

    cfg = apply_overrides(base_config(), [
        ("task.options.prompt_template", r"Question: {problem}\nAnswer:"),  # free-form option: a string
        ("sft.target_template", r"\n{solution}\n"),  # a string key
        ("task.options.step_regex", r"Step \d+:"),  # an escape Python does not know stays as written
        ("task.options.stop_strings", r'("\n\nQ:",)'),  # a literal tuple: Python's own escapes
        ("task.options.vineppo_splits", "false"),
        ("ppo.whiten_advantages", "true"),
    ])
    assert cfg.task.options.prompt_template == "Question: {problem}\nAnswer:"
    assert cfg.sft.target_template == "\n{solution}\n" and cfg.task.options.step_regex == "Step \\d+:"
    assert cfg.task.options.stop_strings == ("\n\nQ:",) and cfg.task.options.vineppo_splits is False
    assert cfg.ppo.whiten_advantages is True
    assert apply_overrides(base_config(), [("ppo.whiten_advantages", "None")]).ppo.whiten_advantages is None
    with pytest.raises(ConfigError, match="ppo.whiten_advantages"):
        validate(apply_overrides(base_config(), [("ppo.whiten_advantages", "3")]))
