"""examples/custom_task: the README's commands (SFT → VinePPO → evaluate.py → analyze_values.py)
on the plug-in ledger task, at toy size, as a user runs them; and the task's own pieces."""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from xla_flags import FAST_COMPILE

from vinejax.tasks import get_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_task"
TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
        "--config.model.num_kv_heads=1", "--config.model.intermediate_size=64", "--config.mesh.shape=(1,1,1)",
        "--config.task.num_eval_problems=4", "--config.eval.samples_per_problem=1", "--config.eval.greedy=false"]
TOY = {  # toy sizes appended to each README command
    "sft.py": ["--config.sft.max_steps=3"],
    "vineppo.py": ["--config.train.iterations=2", "--config.sampling.problems_per_iteration=4",
                   "--config.sampling.samples_per_problem=2", "--config.sampling.batch_size=8",
                   "--config.ppo.episodes_per_step=8", "--config.ppo.micro_batch=8", "--config.vineppo.num_rollouts=2",
                   "--config.sampling.max_new_tokens=24", "--config.train.eval_every=0"],
    "evaluate.py": ["--num-problems", "4", "--samples", "2"],
    "analyze_values.py": ["--num_states", "4", "--gt_rollouts", "2", "--mc_ks", "1", "--ranking_states", "0",
                          "--bootstrap", "10", "--num_problems", "4"],
}


def readme_commands():
    text = (EXAMPLE / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.startswith("python ")]


def test_the_task_reads_its_data_grades_and_splits_its_own_way():
    task = get_task("ledger:task", import_dir=str(EXAMPLE))
    splits = {s: task.load_split(s) for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [2000, 100, 100]
    assert not {p.problem for p in splits["train"]} & {p.problem for p in splits["test"]}
    p = splits["train"][0]
    assert task.grade_batch([p.solution, p.solution.replace(f"balance: {p.answer}", "balance: 999")], [p, p],
                            num_workers=1).tolist() == [1.0, 0.0]
    steps = task.split_steps(p.solution)
    assert "".join(steps) == p.solution and len(steps) == p.solution.count("=")  # one step per move
    assert steps[-1].endswith(f"balance: {p.answer}")
    tok = task.tokenizer()
    assert tok.decode(tok(p.solution, add_special_tokens=False)["input_ids"]) == p.solution


@pytest.mark.slow
def test_readme_commands_run_sft_vineppo_evaluate_and_analysis(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=FAST_COMPILE)
    commands = readme_commands()
    assert [pathlib.Path(c[1]).name for c in commands] == ["run.py", "run.py", "evaluate.py", "analyze_values.py"]
    for command in commands:
        args = [a.replace("runs/", f"{tmp_path}/") for a in command[1:]]
        script = pathlib.Path(args[0]).name
        config = next((pathlib.Path(a).name for a in args if a.endswith(".py") and "examples" in a), script)
        extra = TINY if script == "run.py" else []
        extra += [f"--config.output_dir={tmp_path}/ledger_{config[:-3]}"] if script == "run.py" else []
        extra += [f"--config.model.init_from={tmp_path}/ledger_sft"] if config == "vineppo.py" else []
        out = subprocess.run([sys.executable, *args, *extra, *TOY[config]], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, (command, out.stdout[-2000:], out.stderr[-3000:])
    records = [json.loads(line) for line in open(tmp_path / "ledger_vineppo" / "metrics.jsonl")]
    assert [r["iteration"] for r in records] == [0, 1] and all("mc/num_states" in r for r in records)
    assert json.load(open(tmp_path / "ledger_vineppo" / "config.json"))["import_dir"] == str(EXAMPLE)
    summary = json.load(open(tmp_path / "ledger_vineppo" / "eval" / "test" / "hf.json"))
    assert summary["metrics"]["accuracy"] >= 0 and summary["split"] == "test"
    assert (tmp_path / "ledger_vineppo" / "value_analysis" / "value_analysis.json").exists()
