"""Paths that may live in a bucket: local folders and `gs://` (or any other `etils.epath` /
fsspec) URLs, one set of helpers for both.

A run writes its checkpoints through orbax (tensorstore writes the arrays with its own GCS
client) and every other file through `etils.epath`. Libraries that need a local folder
(safetensors memory-maps its files, transformers reads tokenizers from disk) get a local copy of
a remote folder (`local_folder`), and the HF export is written locally and uploaded
(`upload_folder`). A path without a scheme is an ordinary local path and behaves as before.

Errors reaching a remote path are `StorageError`s: one line naming the config key and the path.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from typing import Iterator

from etils import epath


class StorageError(RuntimeError):
    """A path could not be read or written (a missing bucket, no permission, no connection)."""


def is_remote(path) -> bool:
    """Whether `path` is a URL (`gs://bucket/...`, `s3://...`) rather than a local path."""
    return "://" in os.fspath(path) and not os.fspath(path).startswith("file://")


def display(path) -> str:
    """`path` as a user reads it: absolute when local, the URL itself when remote."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def use_storage_emulator() -> None:
    """With `STORAGE_EMULATOR_HOST` set (the Google clients' standard variable), point the two
    GCS clients that ignore it at the emulator too: tensorstore, which orbax writes arrays
    through (`TENSORSTORE_GCS_HTTP_URL`), and gcsfs's gRPC probe, which would wait 60 s per
    bucket (`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`; read when gcsfs is imported)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if host:
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host if "://" in host else "http://" + host)
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@contextlib.contextmanager
def reaching(path, key: str, action: str = "read") -> Iterator[None]:
    """Turn a failure to reach the remote `path` into one `StorageError` line naming `key`."""
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        if not is_remote(path):
            raise
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        if isinstance(error, FileNotFoundError):
            reason = "not found (does the bucket exist?)"
        raise StorageError(f"cannot {action} {path} ({key}): {type(error).__name__}"
                           + (f": {reason}" if reason else "")) from None


def exists(path, key: str = "") -> bool:
    with reaching(path, key or "path"):
        return epath.Path(path).exists()


def isdir(path, key: str = "") -> bool:
    with reaching(path, key or "path"):
        return epath.Path(path).is_dir()


def check_writable(folder, key: str, process: int = 0) -> None:
    """Create `folder` and write and delete a small file there; a `StorageError` naming `key`
    when that fails (a missing bucket, no permission). `process` keeps hosts' probes apart."""
    probe = epath.Path(folder) / f".vinejax-write-check-{process}"
    try:
        with reaching(folder, key, "write to"):
            epath.Path(folder).mkdir(parents=True, exist_ok=True)
            probe.write_text("ok\n")
            probe.unlink()
    except OSError as error:  # a local folder: no permission, a read-only or full disk
        raise StorageError(f"cannot write to {folder} ({key}): {error.strerror or error}") from None


def read_text(path) -> str:
    return epath.Path(path).read_text()


def write_text(path, text: str) -> None:
    """Write a whole file at once: locally through a temporary file renamed into place, remotely
    as one object (readers never see a part)."""
    write_bytes(path, text.encode())


def write_bytes(path, data: bytes) -> None:
    target = epath.Path(path)
    if is_remote(path):
        target.write_bytes(data)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / (target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def move(src, dst) -> None:
    """Move a file or folder to `dst` (whose parent is created)."""
    if is_remote(src):  # object stores have no folders to rename: every object is moved
        fs, root = _filesystem(os.fspath(src))
        fs.mv(root, _filesystem(os.fspath(dst))[1], recursive=True)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.move(os.fspath(src), os.fspath(dst))


def remove(path) -> None:
    """Delete the file `path`."""
    epath.Path(path).unlink()


def remove_tree(path) -> None:
    if exists(path):
        epath.Path(path).rmtree()


def _filesystem(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def cache_root() -> str:
    """Where copies of remote folders are kept: `$VINEJAX_CACHE`, else ~/.cache/vinejax."""
    return os.environ.get("VINEJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vinejax")


def local_folder(url: str, key: str) -> str:
    """A local folder with the files of the folder `url`: `url` itself when local, else a copy
    under `cache_root()` (one per URL, reused while every file keeps its size and version: its
    hash, etag or modification time in the listing; processes on one host take turns through a
    lock, so the files are fetched once per host)."""
    if not is_remote(url):
        return url
    fs, root = _filesystem(url)
    with reaching(url, key):
        listing = {os.path.relpath(name, root): [int(info.get("size") or 0), _version(info)]
                   for name, info in fs.find(root, detail=True).items()}
    if not listing:
        raise FileNotFoundError(f"folder not found or empty: {url} ({key})")
    local = os.path.join(cache_root(), "remote", url.replace("://", "/").rstrip("/"))
    marker = os.path.join(local, ".vinejax-complete.json")
    os.makedirs(local, exist_ok=True)
    with open(os.path.join(local, ".vinejax-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(marker) as f:
                if json.load(f) == listing:
                    return local
        except (OSError, ValueError):
            pass
        with reaching(url, key):
            for name in listing:
                os.makedirs(os.path.dirname(os.path.join(local, name)), exist_ok=True)
                fs.get(f"{root.rstrip('/')}/{name}", os.path.join(local, name))
        with open(marker, "w") as f:
            json.dump(listing, f)
    return local


def _version(info: dict) -> str:
    """What changes when a remote file is rewritten, from its listing entry."""
    for key in ("md5Hash", "crc32c", "ETag", "etag", "generation", "updated", "mtime", "LastModified"):
        if info.get(key):
            return str(info[key])
    return ""


def upload_folder(local: str, url: str, key: str) -> None:
    """Copy the files of the local folder `local` into the folder `url` (replacing what is there)."""
    fs, root = _filesystem(url)
    with reaching(url, key, "write to"):
        if fs.exists(root):
            fs.rm(root, recursive=True)
        for folder, _, files in os.walk(local):
            for name in files:
                path = os.path.join(folder, name)
                fs.put_file(path, f"{root.rstrip('/')}/{os.path.relpath(path, local)}")


@contextlib.contextmanager
def staging_folder(url: str, name: str) -> Iterator[str]:
    """A local folder to write what goes to `url` (the folder itself when local; else a folder
    named after `name`, the same on every process, removed on exit)."""
    if not is_remote(url):
        yield url
        return
    folder = os.path.join(tempfile.gettempdir(), "vinejax-staging", name)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
