"""Atomic writes: readers see the old file or folder, or the complete new one, never a partial one.

Folders are swapped under an exclusive lock on their parent folder (`folder_lock`); readers that take it
shared (Bundle.load, Predictor.load) see no swap while they read. Only writers clean up. Every temporary name
carries its writer's pid (`.NAME.PID-RANDOM.tmp`), and a sweep removes only what dead processes left, matched
by exact name, so it never touches a live writer's files or another path's. Readers never write: a bundle on
a read-only disk loads with leftovers beside it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


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


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def _dead_owner(match: re.Match | None) -> bool:
    return bool(match) and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1)))


def sweep_dead(folder: str | Path, pattern: re.Pattern) -> None:
    """Remove what killed processes left in `folder`: the entries whose name matches `pattern`, whose
    group 1 is the pid of the process that made them, and whose process is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for leftover in folder.iterdir():
        if _dead_owner(pattern.fullmatch(leftover.name)):
            _remove(leftover)


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
def folder_lock(folder: str | Path, shared: bool = False) -> Iterator[None]:
    """An advisory lock on `folder` itself, so no lock file is left behind (a read-only disk can take it too).

    Writers take it exclusively for the moment they swap an entry of the folder; readers take it shared while
    they read one. A reader that cannot open the folder (no read permission, or no such folder) goes without,
    and so does anyone on a file system without locks: pid-tagged names still keep writers apart.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        if not shared:
            raise
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            except OSError as e:   # ENOLCK, or EBADF on NFS for a read-only descriptor
                log.debug("no lock on %s (%s); going on without", folder, e.strerror)
        yield
    finally:
        if fd is not None:
            os.close(fd)


@functools.cache
def _renameat2():
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    rename = _renameat2()
    if rename is None:
        return False
    if rename(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(new: Path, path: Path) -> None:
    """Put `new` at `path`. What was at `path` ends up under `new`'s name, for the caller to remove."""
    if not os.path.lexists(path):
        os.replace(new, path)
    elif not _exchange(new, path):
        # Two renames, with a moment where `path` is missing: a writer killed there leaves `.NAME.PID-….old`,
        # which the next writer puts back (see _recover).
        old = new.with_suffix(".old")
        os.replace(path, old)
        os.replace(new, path)
        os.replace(old, new)


def _recover(path: Path) -> None:
    """Clean up after killed writers of `path` (call under folder_lock): put back a folder that a swap
    cut between its renames left aside, and remove staging folders. Dead writers' leftovers only."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)-\w+\.(?:tmp|old)")
    if not os.path.lexists(path):
        aside = [p for p in path.parent.iterdir() if p.suffix == ".old" and _dead_owner(pattern.fullmatch(p.name))]
        if aside:
            os.replace(max(aside, key=lambda p: p.lstat().st_mtime), path)
    sweep_dead(path.parent, pattern)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it takes the place of `path`.

    The swap holds `folder_lock` on the parent, and exchanges the two folders in one step where the system can
    (Linux), so readers find a complete folder at `path`; the old one is then removed. Under the same lock,
    writers clean up what killed writers left beside `path`, before they stage and before they swap.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(path.parent):
        _recover(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        with folder_lock(path.parent):
            _recover(path)
            _swap_in(tmp, path)
        _fsync_dir(path.parent)
    finally:
        _remove(tmp)
