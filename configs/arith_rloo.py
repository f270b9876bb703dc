"""RLOO on the arithmetic task from the SFT policy of configs/arith_sft.py: VinePPO's settings
(configs/arith_vineppo.py) with advantages from the group of 8 samples of each problem instead of MC values."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arith_vineppo import get_config as vineppo_config  # noqa: E402


def get_config():
    c = vineppo_config()
    c.algo = "rloo"
    c.output_dir = "runs/arith_rloo"
    return c
