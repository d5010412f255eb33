"""Crash-safe folders for training checkpoints: a checkpoint appears complete or not at all.

A checkpoint is written into a temporary sibling folder (``.tmp-<name>``), every file in it is
flushed to disk, and the folder is renamed into place in one step. Folders are removed the same
way in reverse: renamed to ``.old-<name>`` first, then deleted, so a process killed while
deleting never leaves a half-deleted folder under a checkpoint's name. Only folders named
``step-*`` that hold the trainer's state file count as checkpoints; leftovers of killed runs are
cleared by :func:`clear_leftovers`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pb_adapters.utils.files import fsync_path

__all__ = ["clear_leftovers", "commit_folder", "complete_checkpoints", "remove_folder"]

_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def remove_folder(folder: Path) -> None:
    """Delete ``folder`` so that it disappears at once (rename first, then delete)."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{_OLD_PREFIX}{folder.name}-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    fsync_path(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


def commit_folder(tmp: Path, final: Path) -> Path:
    """Flush the finished folder ``tmp`` to disk and rename it to ``final`` (replacing it)."""
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step after resuming from an older checkpoint
        remove_folder(final)
    os.replace(tmp, final)
    fsync_path(final.parent)
    return final


def complete_checkpoints(root: Path, state_file: str) -> list[Path]:
    """The complete checkpoint folders under ``root`` (``step-*`` with ``state_file``), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / state_file).is_file())


def clear_leftovers(root: Path) -> None:
    """Delete temporary and half-deleted folders that killed runs left under ``root``."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
