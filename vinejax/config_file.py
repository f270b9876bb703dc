"""Loading a config from the command line: `--config configs/x.py --config.section.key=value ...`.

A config file is a Python file with `get_config()` returning a (locked) `base_config()` with its
values changed. Overrides are typed by the key's default (bool, int, float, str, tuple), and a
misspelt key or section fails with one line that names it and suggests the nearest key.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import re
import sys
import warnings

import ml_collections

from vinejax.config import ConfigError, base_config, flat_keys, key_docs

FLAG = "--config"


def parse_argv(argv: list[str], require_file: bool = True) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(config path, [(dotted key, raw value)], other arguments) from a command line; the path
    is "" when there is no `--config FILE` and not `require_file`."""
    path, overrides, rest = "", [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == FLAG:
            if not args:
                raise ConfigError("--config needs a file: --config configs/<name>.py")
            path = args.pop(0)
        elif arg.startswith(FLAG + "="):
            path = arg[len(FLAG) + 1:]
        elif arg.startswith(FLAG + "."):
            key, eq, value = arg[len(FLAG) + 1:].partition("=")
            if not eq:
                if not args:
                    raise ConfigError(f"--config.{key} needs a value: --config.{key}=VALUE")
                value = args.pop(0)
            overrides.append((key, value))
        else:
            rest.append(arg)
    if not path and require_file:
        raise ConfigError("no config file given: --config configs/<name>.py")
    return path, overrides, rest


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of the Python file at `path` (its folder is importable while it loads, and
    `import_dir`, when the file leaves it empty: plug-ins named "pkg.module:name" are found there)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"vinejax_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {path} has no get_config()")
        cfg = module.get_config()
        if "import_dir" in cfg and not cfg.import_dir:
            cfg.import_dir = folder
        return cfg
    except (AttributeError, KeyError) as error:  # a misspelt key inside the file (the schema is locked)
        message = str(error.args[0] if error.args else error).replace("\n", " ")
        raise ConfigError(f"{path}: unknown config key {message}") from None
    finally:
        sys.path.remove(folder)


def _suggest(key: str, known: list[str]) -> str:
    """"; did you mean 'x'?" for the nearest known key: same last part first (train.lrr -> optim.lr)."""
    last = key.rsplit(".", 1)[-1]
    by_last = {k: k.rsplit(".", 1)[-1] for k in known}
    close = difflib.get_close_matches(last, list(set(by_last.values())), n=1, cutoff=0.6)
    if close:
        same = [k for k, tail in by_last.items() if tail == close[0]]
        best = difflib.get_close_matches(key, same, n=1, cutoff=0.0) or same
        return f"; did you mean {best[0]!r}?"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


_ESCAPE = re.compile(r"\\(N\{[^}]*\}|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{1,3}|.)", re.S)


def unescape(raw: str) -> str:
    """`raw` read as the body of a Python string literal: `\\n` is a newline, `\\t` a tab,
    `\\\\` one backslash, `\\u00e9` é; an escape Python does not know (`\\d`) stays as written."""
    def one(match):
        try:
            return ast.literal_eval('"\\' + match.group(1) + '"') if match.group(1) != '"' else '"'
        except (SyntaxError, ValueError):
            return match.group(0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "invalid escape sequence" for the ones kept as written
        return _ESCAPE.sub(one, raw)


def _typed(raw: str, default, key: str):
    """`raw` parsed as the type of `default` (strings read as Python string literals are, `unescape`)."""
    if isinstance(default, str):
        return unescape(raw)
    if default is None and raw.lower() in ("true", "false", "none"):  # true / false / None keys
        return {"true": True, "false": False, "none": None}[raw.lower()]
    if isinstance(default, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key {key!r} must be true or false, got {raw!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if default is None:
            return unescape(raw)
        raise ConfigError(f"config key {key!r}: cannot read {raw!r} as a {type(default).__name__}") from None
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    """Set each dotted key to its value. Keys under `task.options` are free-form; any other key
    must exist in the schema."""
    known = flat_keys(cfg)
    for key, raw in overrides:
        *path, last = key.split(".")
        node = cfg
        for depth, part in enumerate(path):
            if part not in node:
                prefix = ".".join(path[: depth + 1])
                sections = sorted({k.rsplit(".", 1)[0] for k in known if "." in k})
                raise ConfigError(f"config section {prefix!r} is unknown{_suggest(prefix, sections)}")
            node = node[part]
        free_form = path[:2] == ["task", "options"]
        if last not in node and not free_form:
            raise ConfigError(f"config key {key!r} is unknown{_suggest(key, known)}")
        default = node[last] if last in node else None
        value = _typed(raw, default, key)
        try:
            if free_form and last not in node:
                with node.unlocked():
                    node[last] = value
            else:
                node[last] = value
        except TypeError:  # ml_collections keeps each key's type: a float for an integer key, ...
            kind = "an integer" if isinstance(default, int) else f"a {type(default).__name__}"
            raise ConfigError(f"config key {key!r} must be {kind}, got {raw!r}") from None
    return cfg


def config_from_argv(argv: list[str]) -> tuple[ml_collections.ConfigDict, str, list[tuple[str, str]], list[str]]:
    """(config, its file, the overrides applied, the remaining arguments) of a command line."""
    path, overrides, rest = parse_argv(argv)
    return apply_overrides(load_config_file(path), overrides), path, overrides, rest


def help_text() -> str:
    """Every section and key of the schema, in its order, with its default and its one-line doc
    (`config.key_docs`: the comments of `base_config`)."""
    defaults, lines = base_config(), []
    for key, doc in key_docs().items():
        node = defaults
        for part in key.split("."):
            node = node[part]
        note = f"  # {doc}" if doc else ""
        if isinstance(node, ml_collections.ConfigDict) and not key.endswith(".options"):
            lines.append(f"\n[{key}]" + (f"  {doc}" if doc else ""))
        else:
            lines.append(f"  {key} = {'{...}' if key.endswith('.options') else repr(node)}{note}")
    return "\n".join(lines)
