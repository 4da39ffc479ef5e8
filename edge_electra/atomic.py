"""Atomic writes: readers see the old file or folder, or the complete new one, never a partial one."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_dead(folder: str | Path, pattern: re.Pattern) -> None:
    """Remove what killed processes left in `folder`: the entries whose name matches `pattern`, whose
    group 1 is the pid of the process that made them, and whose process is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for leftover in folder.iterdir():
        match = pattern.fullmatch(leftover.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def sweep_files(path: str | Path) -> None:
    """Remove the temporaries beside `path` that killed `atomic_file` writers left (their names carry the
    writer's pid; nested writers add a dot and their own suffix). Those of running writers stay."""
    path = Path(path)
    sweep_dead(path.parent, re.compile(r"\.+" + re.escape(path.name) + r"\.(\d+)-.*\.tmp"))


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    Temporaries left beside `path` by a killed writer are removed first (see `sweep_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it takes the place of `path`.

    An existing folder at `path` is moved aside first and removed only after the new one is in
    place, so an interruption at any moment leaves either the old folder or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover(path: str | Path) -> None:
    """Undo a swap that was killed between its two renames, and sweep leftover temporaries."""
    path = Path(path)
    if not path.parent.exists():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if olds and not path.exists():
        os.replace(olds.pop(), path)
    for leftover in olds + list(path.parent.glob(f".{path.name}.*.tmp")):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
