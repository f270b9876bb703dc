"""SFT on the harder arithmetic variant: 5-operation chains whose demonstrations drop the carry of
multiplications 90% of the time (and never slip elsewhere).

The SFT policy is confidently wrong at one kind of step (``*`` lines that carry) and right at
the others, so a final-answer reward has to be traced back to that step: the case where step-level
credit (VinePPO's MC values) should matter most. The RL stages of the comparison
(experiments/compare.py) start from it with ``HARD_OPTIONS`` applied to their task.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arith_sft import get_config as sft_config  # noqa: E402

HARD_OPTIONS = {"num_operations": 5, "slip_rate": 0.9, "slip_kind": "carry", "slip_ops": "*"}


def get_config():
    c = sft_config()
    c.task.options.update(HARD_OPTIONS)
    c.output_dir = "runs/arith_hard_sft"
    return c
