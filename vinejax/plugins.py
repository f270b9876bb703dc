"""Objects named in a config by import path, "package.module:name": a plug-in task's factory
(`task.name`), a user's estimator (`algo`). The module is imported from PYTHONPATH or from
`import_dir` (the config file's folder); every failure is one `ConfigError` naming the key."""
from __future__ import annotations

import importlib
import os
import re
import sys

from vinejax.errors import ConfigError

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(name: str) -> bool:
    """Whether `name` has the form "package.module:name"."""
    return bool(_PATH.match(name))


def add_import_dir(import_dir: str) -> None:
    """Put `import_dir` (when given) first on sys.path, once: plug-in modules import from it, now
    and later (a module may import its neighbours lazily)."""
    if import_dir and os.path.abspath(import_dir) not in sys.path:
        sys.path.insert(0, os.path.abspath(import_dir))


def load_object(spec: str, key: str, import_dir: str = "", known: str = "", error: type = ConfigError):
    """The object `spec` ("package.module:name", the name may be dotted) names; `key` is the config
    key that gave it and `known` the built-in names, both for the messages of the `error` raised."""
    where = f"config key {key!r} is {spec!r}"
    if not is_import_path(spec):
        raise error(f"{where}: not one of {known} nor an import path 'package.module:name'" if known
                    else f"{where}: not an import path 'package.module:name'")
    module_name, _, attr = spec.partition(":")
    add_import_dir(import_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as failure:
        if failure.name and module_name.startswith(failure.name):
            searched = f"PYTHONPATH or {import_dir}" if import_dir else "PYTHONPATH"
            raise error(f"{where}: module {module_name!r} not found (searched {searched})") from None
        raise error(f"{where}: importing {module_name!r} failed: {failure}") from None
    except Exception as failure:
        raise error(f"{where}: importing {module_name!r} failed: {type(failure).__name__}: {failure}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{where}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{where}: {attr!r} is a {type(obj).__name__}, not a factory (class or function)")
    return obj
