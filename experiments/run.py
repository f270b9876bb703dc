"""Entry point: `python experiments/run.py --config configs/<name>.py [--config.key=value ...] [--verbose]`.

A wrong key, a missing file or folder, or an impossible setting ends the run with one line
naming it (exit status 2); `--verbose` shows library logs and full tracebacks; `--help` lists
every section and key with its default and what it does. A string value is read as the body of
a Python string literal (`--config.task.options.prompt_template='Q: {problem}\\nA:'` holds a newline).
SIGTERM or Ctrl-C stops the run at its next safe point with a checkpoint and one line (exit status
75: run the same command again to continue); a second one ends it at once. A finished run prints
its result.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        from vinejax.config_file import help_text

        print(__doc__.strip() + "\n\nConfig keys (set in the file or as --config.section.key=value):\n\n" + help_text())
        return 0
    from vinejax.train.stage import quiet_library_logs, run_command

    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    quiet_library_logs(verbose)

    def body():
        from vinejax.config import ConfigError
        from vinejax.config_file import config_from_argv
        from vinejax.train.loop import run

        cfg, path, overrides, rest = config_from_argv(argv)
        if rest:
            raise ConfigError(f"unknown argument {rest[0]!r} (use --config.section.key=value)")
        run(cfg, config_file=path, overrides=overrides)

    return run_command(body, verbose)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
