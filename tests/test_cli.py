"""`experiments/run.py` as a user runs it: every mistake a user makes is one line on stderr that
names the culprit (exit status 2), and a run's console carries no library INFO lines."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

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
    (["--config", "configs/arith_sft.py", "--config.sft.max_steps=2.5"], "config key 'sft.max_steps' must be an integer, got '2.5'"),
])
def test_user_mistakes_are_one_line_naming_the_culprit(args, culprit, tmp_path):
    out = run_cli(*args, "--config.output_dir=" + str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert culprit in lines[0]


def test_model_folder_without_tokenizer_names_the_tokenizer_key(tmp_path):
    from helpers_hf import save_tiny

    model = save_tiny(tmp_path, "llama_gqa")  # config.json + safetensors, no tokenizer files
    out = run_cli("--config", SFT, f"--config.model.hf_path={model}", "--config.output_dir=" + str(tmp_path / "run"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("error: config key 'model.tokenizer_path': no tokenizer files") and str(model) in lines[0]
    assert not os.path.exists(tmp_path / "run" / "config.json")  # nothing recorded for a failed start


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


# A tiny SFT through the command line: fast steps, a shared compilation cache between launches.
SMALL_SFT = ["--config", "configs/arith_sft.py", "--config.model.num_layers=1", "--config.model.hidden_size=32",
             "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.model.intermediate_size=64",
             "--config.task.options.num_problems=256", "--config.sft.batch_size=16", "--config.sft.micro_batch=16",
             "--config.train.eval_every=0", "--config.train.checkpoint_every=1000"]


class Launch:
    """experiments/run.py in a child process; its stdout lines collected as they come."""

    def __init__(self, *args, cache):
        env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=FAST_COMPILE, JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")))
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None and time.time() < deadline, ("".join(self.lines), self.proc.stderr.read())
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        self.reader.join()
        return code, "".join(self.lines), self.proc.stderr.read()


def test_sigterm_saves_says_one_line_exits_75_and_the_rerun_continues(tmp_path):
    args = [*SMALL_SFT, "--config.task.options.num_problems=2048", "--config.sft.max_steps=300",
            "--config.output_dir=" + str(tmp_path / "sft")]
    first = Launch(*args, cache=tmp_path / "cache")
    first.wait_for("sft step 1 |")
    first.proc.send_signal(signal.SIGTERM)
    code, out, err = first.finish()
    assert code == 75, (out, err)
    last = out.strip().splitlines()[-1]
    assert last.startswith("preempted (SIGTERM): stopped at step ") and "run the same command again" in last, out
    assert "Traceback" not in err and "error" not in err.lower(), err
    step = int(last.split("stopped at step ")[1].split()[0])
    assert 1 <= step < 300 and f"with checkpoint {step} in" in last

    code, out, err = Launch(*args, cache=tmp_path / "cache").finish()
    assert code == 0, err[-3000:]
    assert f"resumed from checkpoint {step} " in out and "sft step 300 |" in out
    started = time.time()
    code, out, err = Launch(*args, cache=tmp_path / "cache").finish()
    assert code == 0 and "finished earlier: sft step 300" in out, (out, err)
    print(f"finished run rerun: {time.time() - started:.1f} s")


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_without_traceback(tmp_path):
    """The first Ctrl-C asks for a stop at the next safe point; the second, sent while an optimizer
    step of ~1 s runs (the main thread waits inside XLA), ends the process at once."""
    args = [*SMALL_SFT, "--config.model.num_layers=4", "--config.model.hidden_size=128", "--config.model.num_heads=4",
            "--config.model.num_kv_heads=4", "--config.model.intermediate_size=512",
            "--config.task.options.num_problems=2048", "--config.sft.batch_size=1024", "--config.sft.micro_batch=1024",
            "--config.output_dir=" + str(tmp_path / "sft")]
    run = Launch(*args, cache=tmp_path / "cache")
    run.wait_for("sft step 1 |")
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    sent = time.time()
    run.proc.send_signal(signal.SIGINT)
    code, out, err = run.finish(timeout=60)
    assert code == 130, (code, out[-2000:], err[-2000:])  # 128 + SIGINT, not 139 (a segmentation fault)
    assert time.time() - sent < 5
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Segmentation" not in err, err
