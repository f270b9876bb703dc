"""`experiments/run.py` as a user runs it: every mistake a user makes is one line on stderr that
names the culprit (exit status 2), and a run's console carries no library INFO lines."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
from xla_flags import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = FAST_COMPILE  # one CPU device
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


GSM8K = "configs/gsm8k_rho1b_vineppo.py"
SFT = "configs/gsm8k_rho1b_sft.py"


@pytest.mark.parametrize("args, culprit", [
    (["--config", "configs/arith_vineppo.py", "--config.train.lrr=1"], "'train.lrr' is unknown; did you mean 'optim.lr'?"),
    (["--config", "configs/arith_vineppo.py", "--config.trian.lr=1"], "section 'trian' is unknown; did you mean 'train'"),
    (["--config", "configs/nope.py"], "config file not found: configs/nope.py"),
    (["--config", GSM8K, "--config.model.hf_path=/no/such/model"], "model folder not found: /no/such/model (model.hf_path)"),
    (["--config", GSM8K, "--config.model.init_from=/no/such/run"], "run folder not found: /no/such/run (model.init_from)"),
    (["--config", SFT, "--config.task.data_dir=/no/such/data"], "data folder not found: /no/such/data (task.data_dir)"),
    (["--config", SFT], "'model.tokenizer_path': task 'gsm8k' has no tokenizer of its own"),
    (["--config", "configs/arith_vineppo.py", "--config.mesh.shape=(0,-1,1)"], "'mesh.shape'"),
    (["--config", "configs/arith_vineppo.py", "--config.model.init_from=", "--config.model.context_size=4096"],
     "'model.context_size' is 4096, but the model has 192 positions"),
    (["--config", "configs/arith_sft.py", "--config.sft.max_seq_len=584"], "'sft.max_seq_len' is 584"),
    (["--config", "configs/arith_vineppo.py", "--config.sampling.top_p=yes"], "'sampling.top_p'"),
    (["--config", "configs/arith_sft.py", "--config.task.name=mytask"], "'task.name' is 'mytask': not one of"),
    (["--config", "configs/arith_sft.py", "--config.task.options.grdaer=strict"],
     "'task.options.grdaer' is not an option of task 'arithmetic'; its options: add_range,"),
    (["--config", "configs/arith_vineppo.py", "--config.algo=mypkg.estimators:Mine"],
     "'algo' is 'mypkg.estimators:Mine': module 'mypkg.estimators' not found"),
])
def test_user_mistakes_are_one_line_naming_the_culprit(args, culprit, tmp_path):
    out = run_cli(*args, "--config.output_dir=" + str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert culprit in lines[0]


def test_unsupported_model_type_is_one_line(tmp_path):
    from vinejax.tasks.arithmetic import ALPHABET
    from vinejax.tasks.char_tokenizer import build_char_tokenizer

    folder = tmp_path / "model"
    build_char_tokenizer(ALPHABET).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 128, "bos_token_id": 1, "eos_token_id": 2}))
    out = run_cli("--config", "configs/arith_vineppo.py", "--config.model.init_from=", f"--config.model.hf_path={folder}",
                  "--config.output_dir=" + str(tmp_path / "run"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("error: unsupported model_type 'gpt2'; supported: llama") and "gemma3_text" in lines[0]


def test_help_lists_every_section_and_key_with_its_doc():
    from vinejax.config import base_config, flat_keys

    out = run_cli("--help")
    assert out.returncode == 0, out.stderr[-2000:]
    for section in ("[model]", "[task]", "[sampling]", "[vineppo]", "[vineppo.adaptive]", "[ppo]", "[eval]", "[mesh]"):
        assert section in out.stdout
    lines = {line.split(" = ", 1)[0].strip(): line for line in out.stdout.splitlines() if " = " in line}
    for key in flat_keys(base_config()):
        assert key in lines and "  # " in lines[key], key  # every key, with its one-line doc
    assert "task.chat_template = False  # prompts through the tokenizer's chat template" in out.stdout


def test_missing_data_and_no_hub_is_one_line(tmp_path, monkeypatch):
    from vinejax.tasks.arithmetic import ALPHABET
    from vinejax.tasks.char_tokenizer import build_char_tokenizer

    build_char_tokenizer(ALPHABET).save_pretrained(tmp_path / "tok")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network
    out = run_cli("--config", SFT, f"--config.model.tokenizer_path={tmp_path / 'tok'}", "--config.model.context_size=-1",
                  "--config.eval.context_size=-1", "--config.task.max_prompt_tokens=100", "--config.sft.max_seq_len=256",
                  "--config.output_dir=" + str(tmp_path / "run"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "task.data_dir" in lines[0], out.stderr[-2000:]


def test_a_run_prints_its_setup_and_no_library_info(tmp_path):
    out = run_cli("--config", "configs/arith_sft.py", "--config.sft.max_steps=2", "--config.train.eval_every=0",
                  "--config.train.checkpoint_every=1", "--config.model.num_layers=1",
                  "--config.output_dir=" + str(tmp_path / "sft"))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "config configs/arith_sft.py | overrides sft.max_steps=2" in out.stdout
    assert "devices:" in out.stdout and "mesh" in out.stdout and str(tmp_path / "sft") in out.stdout
    assert " INFO " not in text and "I1" not in "".join(line[:2] for line in text.splitlines())
    assert "dropped" in out.stdout  # SFT says how many examples it dropped
