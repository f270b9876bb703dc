"""plot.py draws SFT runs with SFT panels (loss, gradient norm, eval) and RL runs with RL panels."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import plot  # noqa: E402


def _write(run_dir, records):
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_sft_run_gets_sft_panels_with_data(tmp_path, monkeypatch):
    run = str(tmp_path / "sft")
    _write(run, [{"iteration": s, "sft/nll": 2.0 / s, "sft/grad_norm": 1.0} for s in (1, 20, 40)]
           + [{"iteration": 40, "eval/accuracy": 0.4}])
    lines = []
    real = plot.plt.Axes.plot

    def spy(ax, xs, ys, *args, **kwargs):
        lines.append((ax, list(ys)))
        return real(ax, xs, ys, *args, **kwargs)

    monkeypatch.setattr(plot.plt.Axes, "plot", spy)
    out = plot.plot([run], str(tmp_path / "c.png"))
    drawn = {ax.get_title(): ys for ax, ys in lines}
    assert os.path.getsize(out) > 1000
    assert drawn["SFT loss (per-example token-mean NLL) vs step"] == pytest.approx([2.0, 0.1, 0.05])
    assert drawn["held-out accuracy (sampled)"] == [0.4] and len(drawn) == 3


def test_missing_metrics_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "plot.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "no metrics file" in out.stderr
