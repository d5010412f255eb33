"""Crash-safe file writing: whole files or nothing, flushed to disk; folder locks.

:func:`atomic_write_bytes` replaces one file; :func:`replace_files` replaces several files of a
folder together, and puts the old ones back if any step fails. :func:`folder_lock` serialises
processes that write one folder, and lets readers see the folder between two saves, never during
one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, saves are still atomic per file
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "atomic_write_bytes",
    "discard",
    "folder_lock",
    "fsync_path",
    "remove_leftovers",
    "replace_files",
]

#: The lock file :func:`folder_lock` keeps in a folder (hidden, never uploaded).
LOCK_NAME = ".pb-adapters.lock"

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


def discard(path: Path) -> None:
    """Delete ``path`` if it exists; a cleanup that never raises (the work it follows is done,
    or already failed with an error that matters more)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stage(folder: Path, name: str, data: bytes) -> Path:
    """``data`` in a flushed temporary file next to ``folder / name``; removed on failure."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make shared artifacts unreadable
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        discard(Path(tmp_name))
        raise
    return Path(tmp_name)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _stage(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        discard(tmp)
        raise


def _backup(target: Path) -> Path:
    """A second name for ``target``'s current content (a hard link, or a copy)."""
    backup = target.with_name(f".{target.name}.{secrets.token_hex(6)}.bak")
    try:
        os.link(target, backup)
    except OSError:  # no hard links on this file system
        os.replace(_stage(target.parent, target.name, target.read_bytes()), backup)
    return backup


def _swap_in(folder: Path, files: Mapping[str, bytes | None], staged: dict[str, Path]) -> None:
    """Rename the staged files over their targets (and delete the ``None`` ones), in order; on
    any failure put every target done so far back as it was."""
    backups: dict[str, Path] = {}
    done: list[str] = []
    try:
        for name, data in files.items():
            target = folder / name
            if target.is_file():
                backups[name] = _backup(target)
            elif data is None:
                continue
            if data is None:
                target.unlink()
            else:
                os.replace(staged[name], target)
                del staged[name]  # in place: no longer a temporary file to clean up
            done.append(name)
        fsync_path(folder)
    except BaseException:
        for name in reversed(done):
            target = folder / name
            with contextlib.suppress(OSError):  # put back all that can be; raise the first error
                if name in backups:
                    os.replace(backups.pop(name), target)
                else:
                    target.unlink(missing_ok=True)
        fsync_path(folder)
        raise
    finally:
        for backup in backups.values():
            discard(backup)


def replace_files(folder: Path, files: Mapping[str, bytes | None]) -> None:
    """Replace several files of ``folder`` together: all of them, or (on an error) none.

    ``files`` maps file names to their new bytes, or to ``None`` for a file to delete. Every new
    file is first written and flushed under a temporary name (a full disk fails here, before
    anything is replaced); then the files are renamed over the old ones in the order given, each
    old one kept under a second name until all are in place, so that a failure part way puts the
    old ones back. A process killed part way leaves each file either old or new, never half
    written; its temporary files are removed by :func:`remove_leftovers`.
    """
    staged: dict[str, Path] = {}
    try:
        for name, data in files.items():
            if data is not None:
                staged[name] = _stage(folder, name, data)
        _swap_in(folder, files, staged)
    finally:
        for tmp in staged.values():  # the ones not renamed into place
            discard(tmp)


def remove_leftovers(folder: Path, names: Iterator[str] | list[str] | tuple[str, ...]) -> None:
    """Delete the temporary and backup files that killed writers of ``names`` left in ``folder``.

    Only call this while holding the folder's exclusive :func:`folder_lock`: other writers' files
    are then never in use.
    """
    for name in names:
        for pattern in (f".{name}.*.tmp", f".{name}.*.bak"):
            for leftover in folder.glob(pattern):
                discard(leftover)


@contextlib.contextmanager
def folder_lock(folder: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold ``folder``'s lock: exclusive (``shared=False``) to write, shared to read.

    Writers create the lock file (:data:`LOCK_NAME`) and wait for every other writer and reader;
    readers wait only for writers. A reader of a folder without a lock file (one this library
    never wrote, or a read-only one such as the Hub cache) reads without a lock. The lock is
    released when the block ends or the process dies. Without ``fcntl`` (not POSIX) this does
    nothing.
    """
    if fcntl is None:
        yield
        return
    flags = (os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(folder / LOCK_NAME, flags, 0o666 & ~_UMASK)
    except OSError:
        if not shared:
            raise
        yield  # no lock file, or no right to open it: nobody writes here through this library
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's renames) to disk; a no-op where it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
