"""Reading problem records: local jsonl files, a local directory laid out like ``shared/data``,
or the Hugging Face Hub through ``datasets``; and the paper's seeded train/validation split."""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np
from etils import epath

from vinejax import paths

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A data file is missing or a record lacks a needed field."""


def read_jsonl(path: str | os.PathLike, required_fields: Sequence[str]) -> list[dict]:
    """Read one JSON object per line (a local path or a URL, e.g. ``gs://``); raise ``DataError``
    naming the file, line and missing field."""
    path = os.fspath(path)
    if not paths.exists(path, "task data file"):
        raise DataError(f"data file not found: {path}")
    records = []
    with epath.Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: not valid JSON ({error})") from None
            check_fields(record, required_fields, f"{path}:{line_number}")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records (an empty split)")
    return records


def check_fields(record: dict, required_fields: Iterable[str], where: str) -> None:
    """Raise ``DataError`` if ``record`` lacks one of ``required_fields`` (``where`` names the source)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is not a JSON object")
    for field in required_fields:
        if field not in record or record[field] is None:
            raise DataError(f"{where}: record has no field {field!r} (fields: {sorted(record)})")


def load_hub(name: str, config: str | None, split: str, required_fields: Sequence[str]) -> list[dict]:
    """Load a split of a Hub dataset through ``datasets.load_dataset`` and check its fields."""
    import datasets  # imported lazily: only the hub path needs it

    if not hub_reachable():
        raise DataError(f"no local data (task.data_dir is empty) and the Hugging Face Hub is unreachable for "
                        f"{name}: set task.data_dir to a folder laid out like shared/data")
    dataset = datasets.load_dataset(name, config, split=split)
    records = [dict(row) for row in dataset]
    for index, record in enumerate(records):
        check_fields(record, required_fields, f"hub dataset {name}[{config}]/{split} row {index}")
    return records


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers on port 443 within `timeout` seconds (HF_HUB_OFFLINE=1: no)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def seeded_split(records: Sequence[dict], num_validation: int, seed: int) -> tuple[list, list]:
    """Shuffle ``records`` with ``seed`` and return (train, validation) with ``num_validation`` held out."""
    if not 0 <= num_validation <= len(records):
        raise ValueError(f"cannot hold out {num_validation} of {len(records)} records")
    order = np.random.default_rng(seed).permutation(len(records))
    validation = [records[i] for i in order[:num_validation]]
    train = [records[i] for i in order[num_validation:]]
    return train, validation


def check_split(split: str) -> None:
    """Raise ``ValueError`` for a split name other than train/validation/test."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def count_records(path: str | os.PathLike) -> int:
    """Non-blank lines of a jsonl file (its records, before they are parsed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def check_holdout(files: dict, num_validation: int, key: str = "task.options.num_validation") -> None:
    """Before anything loads: when validation is carved out of ``files["train"]`` (no validation
    file), ``num_validation`` must leave train records; a one-line ``DataError`` naming ``key``."""
    if "validation" in files or "train" not in files or num_validation <= 0:
        return
    n = count_records(files["train"])
    if num_validation >= n:
        raise DataError(f"config key {key!r} is {num_validation}: validation is carved out of the {n} records of "
                        f"{files['train']} and would leave no train record (set it lower or give a validation file)")


def records_of_split(files: dict, split: str, num_validation: int, seed: int, read) -> list:
    """The records of ``split`` from explicit files {split: path}, ``read(path)`` reading one: a
    split's own file, except that without a validation file validation is a seeded subset of
    ``num_validation`` train records, removed from train (0: no validation split)."""
    check_split(split)
    if split in ("train", "validation") and "validation" not in files and "train" in files and num_validation > 0:
        train, validation = seeded_split(read(files["train"]), num_validation, seed)
        return train if split == "train" else validation
    if split in files:
        return read(files[split])
    raise DataError(f"no data file for split {split!r} in data_files {sorted(files)}")
