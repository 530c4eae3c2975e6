"""Atomic writes and the run manifest: everything tov writes to disk goes through here.

A file or directory is written under a temporary name in its destination directory, flushed
with fsync and moved into place with ``os.replace``, so a reader never sees a partial file.
A :class:`Manifest` (JSON, itself written atomically) records the run's arguments and the
finished steps with the sha256 of each file they wrote; a step counts as finished only while
its files still match their checksums, so a rerun redoes exactly the missing or damaged steps.

Tensors are stored only as safetensors (adapters through peft's ``save_pretrained``); nothing
here unpickles user files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from tov_datasets.tables import flat_table

__all__ = [
    "Manifest",
    "ManifestMismatchError",
    "OutputInUseError",
    "exclusive_lock",
    "atomic_write",
    "atomic_write_dir",
    "canonical_hash",
    "dataset_digest",
    "describe_changes",
    "directory_bytes",
    "is_temp_name",
    "load_optimizer_state",
    "load_tensors",
    "locked",
    "read_parquet",
    "remove_temp_files",
    "save_optimizer_state",
    "save_tensors",
    "sha256_file",
    "write_parquet",
]

log = logging.getLogger("tov")

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tov-manifest/1"
LOCK_NAME = ".lock"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_TMP_MARK = ".tmp-"


class ManifestMismatchError(ValueError):
    """An output directory holds a run made with different arguments (or no readable
    manifest). ``directory``: the run's directory; ``changes``: {argument: (stored value,
    new value)} (empty for an unreadable manifest)."""

    def __init__(self, message: str, directory: Path,
                 changes: Mapping[str, tuple[Any, Any]] | None = None):
        super().__init__(message)
        self.directory = directory
        self.changes = dict(changes or {})


class OutputInUseError(RuntimeError):
    """Another process holds the lock of an output directory."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _tmp_name(path: Path) -> str:
    return f".{path.name}{_TMP_MARK}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary name of `atomic_write` / `atomic_write_dir`."""
    return name.startswith(".") and _TMP_MARK in name


def remove_temp_files(directory: str | os.PathLike[str], recursive: bool = True) -> None:
    """Remove the temporary files and directories that killed writers left in (and, if
    ``recursive``, under) ``directory``; hold `locked` on it, so that no live writer owns
    them."""
    pattern = f".*{_TMP_MARK}*"
    found = Path(directory).rglob(pattern) if recursive else Path(directory).glob(pattern)
    for stale in list(found):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask: from /proc on Linux, else by setting it and putting it back
    (a short window in which other threads would create files with 0o022)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create the file ``path`` with ``write(tmp_path)``, atomically (temp name, fsync, rename),
    with the permissions of a plainly created file (0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_name(path), dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0o600
        _fsync_file(Path(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def atomic_write_dir(path: str | os.PathLike[str], build: Callable[[Path], Path | None]) -> Path:
    """Create the directory ``path`` with ``build(tmp_dir)``, atomically.

    ``build`` fills ``tmp_dir`` or returns a directory inside it to use instead. An existing
    ``path`` is removed first (directories cannot be replaced in one rename); the manifest,
    not the directory's presence, says whether a step finished. The directory gets the
    permissions of a plainly created one (0o777 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_name(path), dir=path.parent))
    try:
        built = build(tmp) or tmp
        os.chmod(built, 0o777 & ~_umask())  # mkdtemp creates 0o700
        for f in built.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        if path.exists():
            shutil.rmtree(path)
        os.replace(built, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(value: Any) -> Any:
    """Sets as sorted lists (their iteration order changes with the process's hash seed),
    other non-JSON values as ``str``."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def canonical_hash(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys; sets as sorted lists; other
    non-JSON values via ``str``): the same in every process."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def directory_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the regular files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def dataset_digest(dataset: Any, block_rows: int = 65536) -> str:
    """sha256 of a ``datasets.Dataset``'s content (rows as seen through any indices mapping):
    its Arrow schema and its rows serialised in fixed blocks, so the chunking of the
    underlying table does not matter. Reads every byte once (~1 s per GB)."""
    table = flat_table(dataset)
    h = hashlib.sha256(table.schema.remove_metadata().to_string().encode())
    for start in range(0, table.num_rows, block_rows):
        for batch in table.slice(start, block_rows).combine_chunks().to_batches():
            h.update(batch.serialize())
    return h.hexdigest()


def write_parquet(path: str | os.PathLike[str], table: pa.Table) -> Path:
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_parquet(path: str | os.PathLike[str]) -> pa.Table:
    return pq.read_table(path)


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save tensors as safetensors (contiguous CPU copies), atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=dict(metadata or {})))


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def save_optimizer_state(optimizer: torch.optim.Optimizer, path: str | os.PathLike[str]) -> Path:
    """Save an optimizer's per-parameter state tensors (e.g. AdamW moments and step counts)
    as safetensors; hyperparameters are not saved (the caller rebuilds the optimizer)."""
    tensors = {
        f"{index}.{key}": value if torch.is_tensor(value) else torch.tensor(value)
        for index, state in optimizer.state_dict()["state"].items()
        for key, value in state.items()
    }
    return save_tensors(path, tensors)


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: str | os.PathLike[str]) -> None:
    """Restore state saved by :func:`save_optimizer_state` into an optimizer built over the
    same parameters in the same order."""
    tensors, _ = load_tensors(path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict(
        {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}
    )


def exclusive_lock(path: str | os.PathLike[str], *, wait: bool = True) -> Any:
    """An exclusive lock through the file ``path`` (created if missing), to use as ``with
    lock: ...``; the OS releases it when the process dies. ``wait=False``: acquiring raises
    ``filelock.Timeout`` at once if another holder has it."""
    from filelock import FileLock

    return FileLock(str(path), timeout=-1 if wait else 0)


@contextlib.contextmanager
def locked(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (created if missing) for the block, through
    the file ``.lock`` in it (`exclusive_lock`). Raises `OutputInUseError` at once if
    another process holds it. A directory this call created is removed again when the block
    wrote nothing into it (e.g. a run refused on bad input)."""
    from filelock import Timeout

    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock = exclusive_lock(directory / LOCK_NAME, wait=False)
    try:
        lock.acquire()
    except Timeout:
        raise OutputInUseError(
            f"{directory} is in use by another tov run; wait for it or pass another "
            "output directory"
        ) from None
    try:
        yield
    finally:
        lock.release()
        if created and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
            with contextlib.suppress(OSError):  # another run may have taken it meanwhile
                (directory / LOCK_NAME).unlink()
                directory.rmdir()


_ABSENT = "<absent>"
_SHOWN_CHARS = 40  # longer values (configs, digests) are summarised in change lists


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old value, new value)} of the keys whose values differ."""
    return {
        k: (old.get(k, _ABSENT), new.get(k, _ABSENT))
        for k in sorted(set(old) | set(new))
        if canonical_hash(old.get(k, _ABSENT)) != canonical_hash(new.get(k, _ABSENT))
    }


def describe_changes(changes: Mapping[str, tuple[Any, Any]],
                     names: Mapping[str, str] | None = None) -> str:
    """One short line: "name: old -> new" per change (short values), "name: changed (keys
    a, b)" for dicts, "name: changed" for other long values; ``names`` renames keys (several
    keys may share a name: listed once; an empty name leaves the key out)."""
    parts: dict[str, str] = {}
    for key, (old, new) in changes.items():
        name = (names or {}).get(key, key)
        if not name:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            inner = sorted(_changes(old, new))
            shown = ", ".join(inner[:4]) + (", ..." if len(inner) > 4 else "")
            text = f"{name}: changed ({shown})"
        elif max(len(repr(old)), len(repr(new))) <= _SHOWN_CHARS:
            text = f"{name}: {old!r} -> {new!r}"
        else:
            text = f"{name}: changed"
        parts.setdefault(name, text)
    return "; ".join(parts.values())


class Manifest:
    """The record of a run in ``directory``: its arguments and its finished steps.

    Opening a directory that holds a manifest with other arguments, or an unreadable one,
    raises :class:`ManifestMismatchError`, unless that run finished no step: then it held
    nothing worth keeping and is replaced (a warning on the "tov" logger says so). Use as a
    context manager: it holds an exclusive lock on the directory (`locked`) and removes
    temporary files left by killed runs.
    """

    def __init__(self, directory: str | os.PathLike[str], args: Mapping[str, Any]):
        self.directory = Path(directory)
        self.args = json.loads(json.dumps(dict(args), sort_keys=True, default=_json_default))
        self.args_hash = canonical_hash(self.args)
        self.steps: dict[str, dict[str, Any]] = {}
        self._lock: contextlib.ExitStack | None = None

    def __enter__(self) -> Manifest:
        stack = contextlib.ExitStack()
        stack.enter_context(locked(self.directory))
        self._lock = stack
        try:
            self._open()
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()

    def _open(self) -> None:
        remove_temp_files(self.directory)
        path = self.directory / MANIFEST_NAME
        if not path.exists():
            self._save()
            return
        try:
            stored = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestMismatchError(
                f"{path} is not valid JSON ({e}); it was damaged or is not a tov manifest: "
                "pass another output_dir, or delete this one to start over", self.directory,
            ) from None
        if not isinstance(stored, dict) or stored.get("format") != MANIFEST_FORMAT:
            raise ManifestMismatchError(
                f"{path} is not a {MANIFEST_FORMAT} manifest; pass another output_dir",
                self.directory,
            )
        if stored["args_hash"] != self.args_hash:
            changes = _changes(stored["args"], self.args)
            if not stored["steps"]:
                log.warning("%s held an earlier run with other arguments that finished no "
                            "step; this run replaces it", self.directory)
                self._save()
                return
            raise ManifestMismatchError(
                f"{self.directory} holds a run made with different arguments "
                f"({describe_changes(changes)}); rerun with the same arguments to resume, or "
                "pass a new output_dir", self.directory, changes,
            )
        self.steps = stored["steps"]

    def _save(self) -> None:
        content = {
            "format": MANIFEST_FORMAT,
            "args_hash": self.args_hash,
            "args": self.args,
            "steps": self.steps,
        }
        text = json.dumps(content, indent=1, sort_keys=True) + "\n"
        atomic_write(self.directory / MANIFEST_NAME, lambda tmp: tmp.write_text(text))

    def path(self, relative: str) -> Path:
        return self.directory / relative

    def verify(self, step: str) -> bool:
        """Whether ``step`` is recorded and each of its files still has its checksum."""
        record = self.steps.get(step)
        if record is None:
            return False
        for relative, digest in record["files"].items():
            path = self.path(relative)
            if not path.is_file() or sha256_file(path) != digest:
                return False
        return True

    def record(self, step: str, paths: list[Path], **info: Any) -> None:
        """Mark ``step`` finished with the files (or all files under directories) it wrote."""
        files = {}
        for p in paths:
            for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
                if f.is_file():
                    files[f.relative_to(self.directory).as_posix()] = sha256_file(f)
        self.steps[step] = {"files": files, "info": info}
        self._save()

    def info(self, step: str) -> dict[str, Any]:
        return self.steps[step]["info"]

    def forget(self, predicate: Callable[[str], bool]) -> None:
        """Drop the steps whose names match ``predicate`` (their files stay until rewritten)."""
        kept = {k: v for k, v in self.steps.items() if not predicate(k)}
        if len(kept) != len(self.steps):
            self.steps = kept
            self._save()
