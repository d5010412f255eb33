"""Crash-safe folders for training checkpoints: a checkpoint appears complete or not at all.

A checkpoint is written into a temporary sibling folder (``.tmp-<name>``), every file in it is
flushed to disk, and the folder is renamed into place in one step. Folders are removed the same
way in reverse: renamed to ``.old-<name>`` first, then deleted, so a process killed while
deleting never leaves a half-deleted folder under a checkpoint's name. Only folders named
``step-*`` that hold the trainer's state file count as checkpoints; leftovers of killed runs are
cleared by :func:`clear_leftovers`.

:func:`save_checkpoint` writes one checkpoint of a run this way: Accelerate's state (model,
optimiser, schedule), each process's random states and the
:class:`~pb_adapters.training.run_state.RunState`, whose JSON file goes last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pb_adapters.training.run_state import STATE_FILE, RunState, rng_state_file, save_rng_state
from pb_adapters.training.sharding import save_best_slice, uses_fsdp
from pb_adapters.utils.files import fsync_path

__all__ = [
    "CHECKPOINTS_DIR",
    "clear_leftovers",
    "commit_folder",
    "complete_checkpoints",
    "latest_checkpoint",
    "remove_folder",
    "resolve_checkpoint",
    "save_checkpoint",
]

#: Sub-folder of ``output_dir`` holding the training checkpoints.
CHECKPOINTS_DIR = "checkpoints"

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


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``<output_dir>/checkpoints`` (None if there is none).

    Folders still being written or deleted (``.tmp-*``, ``.old-*``) or missing the trainer's
    JSON state are ignored.
    """
    done = complete_checkpoints(Path(output_dir) / CHECKPOINTS_DIR, STATE_FILE)
    return done[-1] if done else None


def resolve_checkpoint(output_dir: Path, reference: str | os.PathLike[str]) -> Path:
    """The checkpoint folder ``reference`` names: a path, or ``"latest"`` under ``output_dir``."""
    if str(reference) == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            raise FileNotFoundError(
                f"no checkpoint to resume from in {output_dir / CHECKPOINTS_DIR}; "
                "train without resume_from_checkpoint first"
            )
        return found
    path = Path(reference)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no {STATE_FILE}); pass a "
            f"{CHECKPOINTS_DIR}/step-XXXXXXXX folder or 'latest'"
        )
    return path


class _SharedTaskModuleFilter(logging.Filter):
    """Drops Accelerate's notice about the task head being registered under two names.

    The active task's head (and norms) live both in the base model and in the wrapper's
    ``task_modules``; Accelerate saves the tensor once and says so. That is expected here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Removed shared tensor" in message and "task_modules." in message)


@contextlib.contextmanager
def _quiet_shared_tensor_notice() -> Iterator[None]:
    log = logging.getLogger("accelerate.utils.other")
    notice_filter = _SharedTaskModuleFilter()
    log.addFilter(notice_filter)
    try:
        yield
    finally:
        log.removeFilter(notice_filter)


def save_checkpoint(
    accelerator: Any,
    output_dir: Path,
    state: RunState,
    *,
    args: dict[str, Any],
    save_total_limit: int | None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``<output_dir>/checkpoints/step-<global step>`` (every process takes part).

    ``write_extra(folder)``, when given, adds this process's own files (a streamed run's
    position) before the folder is committed.

    The folder is written under a temporary name, then renamed: a crash mid-save never leaves a
    half-written folder that ``latest`` would pick. Only the ``save_total_limit`` newest
    checkpoints are kept.
    """
    acc = accelerator
    root = output_dir / CHECKPOINTS_DIR
    name = f"step-{state.global_step:08d}"
    tmp = root / f"{_TMP_PREFIX}{name}"
    if acc.is_main_process:
        clear_leftovers(root)  # folders of a killed save, never complete checkpoints
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    with _quiet_shared_tensor_notice():
        acc.save_state(str(tmp))
    save_rng_state(rng_state_file(tmp, acc.process_index))
    if uses_fsdp(acc):  # each process holds, and writes, its own slice of the best epoch
        save_best_slice(state.best_state, tmp, acc.process_index)
        state = dataclasses.replace(state, best_state=None)
    if write_extra is not None:
        write_extra(tmp)
    acc.wait_for_everyone()  # every process's files are in the folder before it is renamed
    if acc.is_main_process:
        # the JSON state is written last: its presence marks a complete checkpoint
        state.save(tmp, args=args)
        commit_folder(tmp, root / name)
        done = complete_checkpoints(root, STATE_FILE)
        if save_total_limit is not None:
            for old in done[: max(0, len(done) - save_total_limit)]:
                remove_folder(old)
    acc.wait_for_everyone()
    return root / name
