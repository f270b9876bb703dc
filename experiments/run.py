"""Entry point: `python experiments/run.py --config configs/<name>.py [--config.key=value ...]`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags
from ml_collections import config_flags

from vinejax.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)


def main(argv):
    del argv
    from vinejax.train.loop import run

    try:
        run(_CONFIG.value)
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
