"""Training checkpoints: crash-safe folders, written and read without pickle.

A checkpoint is written into a temporary sibling folder (``.tmp-<name>``), every file in it is
flushed to disk, and the folder is renamed into place in one step. Folders are removed the same
way in reverse: renamed to ``.old-<name>`` first, then deleted, so a process killed while
deleting never leaves a half-deleted folder under a checkpoint's name. Only folders named
``step-*`` that hold the trainer's state file count as checkpoints; leftovers of killed runs are
cleared by :func:`clear_leftovers`.

:func:`save_checkpoint` writes one checkpoint of a run this way: model, optimiser and schedule
state as safetensors + JSON (:mod:`.optim_state`), each process's random states and the
:class:`~pb_adapters.training.run_state.RunState`, whose JSON file goes last and lists every
other file with its size and SHA-256. :func:`read_checkpoint` reads one back with ``json`` and
``safetensors`` only and checks all of it against the live run before
:meth:`Checkpoint.apply` changes anything; :func:`resume_candidates` lists the checkpoints a
resume may use, newest first, and :func:`first_usable_checkpoint` picks the first all processes
could read, reporting those it skips.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pb_adapters.training.checkpoint_io import CheckpointReader, read_json_file
from pb_adapters.training.errors import CheckpointError
from pb_adapters.training.optim_state import (
    TrainingState,
    read_training_state,
    write_training_state,
)
from pb_adapters.training.run_state import (
    STATE_FILE,
    RunState,
    best_state_file,
    best_state_spec,
    read_rng_state,
    rng_state_file,
    save_best_state,
    save_rng_state,
    set_rng_state,
)
from pb_adapters.training.sharding import uses_fsdp
from pb_adapters.utils.files import fsync_path

__all__ = [
    "CHECKPOINTS_DIR",
    "Checkpoint",
    "clear_leftovers",
    "commit_folder",
    "complete_checkpoints",
    "first_usable_checkpoint",
    "latest_checkpoint",
    "read_checkpoint",
    "remove_folder",
    "resume_candidates",
    "save_checkpoint",
]

#: Sub-folder of ``output_dir`` holding the training checkpoints.
CHECKPOINTS_DIR = "checkpoints"

_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
_STEP_NAME = re.compile(r"step-(\d{8,})")


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
    """The complete checkpoint folders under ``root`` (``step-<digits>`` with ``state_file``),
    oldest first."""
    if not root.is_dir():
        return []
    steps = [
        (int(match.group(1)), p)
        for p in root.iterdir()
        if (match := _STEP_NAME.fullmatch(p.name)) and (p / state_file).is_file()
    ]
    return [p for _, p in sorted(steps)]


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


def resume_candidates(output_dir: Path, reference: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints a resume from ``reference`` may use, in order of preference.

    ``"latest"``: every complete checkpoint under ``<output_dir>/checkpoints``, newest first (a
    resume falls back to an older one when a newer one is unusable). A path: that checkpoint.

    Raises:
        CheckpointError: there is no checkpoint, or the path is not a complete checkpoint.
    """
    if str(reference) == "latest":
        found = complete_checkpoints(Path(output_dir) / CHECKPOINTS_DIR, STATE_FILE)
        if not found:
            raise CheckpointError(
                f"no checkpoint to resume from in {Path(output_dir) / CHECKPOINTS_DIR}; "
                "train without resume_from_checkpoint (--resume) first"
            )
        return found[::-1]
    path = Path(reference)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {STATE_FILE}); pass a "
            f"{CHECKPOINTS_DIR}/step-XXXXXXXX folder or 'latest'"
        )
    return [path]


def resolve_checkpoint(output_dir: Path, reference: str | os.PathLike[str]) -> Path:
    """The checkpoint folder ``reference`` names first: a path, or the newest one for
    ``"latest"`` (see :func:`resume_candidates`)."""
    return resume_candidates(output_dir, reference)[0]


def save_checkpoint(
    accelerator: Any,
    output_dir: Path,
    state: RunState,
    *,
    args: dict[str, Any],
    save_total_limit: int | None,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``<output_dir>/checkpoints/step-<global step>`` (every process takes part).

    ``model`` is the unwrapped model and ``optimizer`` the torch optimiser under Accelerate's
    wrapper. Under FSDP every process writes its own slices of the model, optimiser and best
    state. ``write_extra(folder)``, when given, adds this process's own files (a streamed run's
    position). The folder is written under a temporary name, then renamed: a crash mid-save
    never leaves a half-written folder that ``latest`` would pick. Only the
    ``save_total_limit`` newest checkpoints are kept.

    Raises:
        CheckpointError: the folder could not be written (a full disk, for example); the
            temporary folder is removed and earlier checkpoints are kept.
    """
    acc = accelerator
    root = output_dir / CHECKPOINTS_DIR
    name = f"step-{state.global_step:08d}"
    tmp = root / f"{_TMP_PREFIX}{name}"
    shard = acc.process_index if uses_fsdp(acc) else None  # FSDP: each process's slices
    try:
        if acc.is_main_process:
            clear_leftovers(root)  # folders of a killed save, never complete checkpoints
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        if acc.is_main_process or shard is not None:
            scaler = getattr(acc, "scaler", None)
            write_training_state(
                tmp, model, optimizer, scheduler, scaler, shard=shard, index=acc.is_main_process
            )
            save_best_state(state.best_state, tmp, shard)
        save_rng_state(tmp / rng_state_file(acc.process_index))
        if write_extra is not None:
            write_extra(tmp)
        acc.wait_for_everyone()  # every process's files are in the folder before it is renamed
        if acc.is_main_process:
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            # the JSON state is written last: its presence marks a complete checkpoint
            replace(state, best_state=None).save(tmp, args=args, files=files)
            commit_folder(tmp, root / name)
            done = complete_checkpoints(root, STATE_FILE)
            if save_total_limit is not None:
                for old in done[: max(0, len(done) - save_total_limit)]:
                    remove_folder(old)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {root / name}: {err}") from err
    acc.wait_for_everyone()
    return root / name


@dataclass
class Checkpoint:
    """A checkpoint read and checked against a run, not applied yet."""

    folder: Path
    run_state: RunState
    training: TrainingState
    rng: dict[str, Any]
    reader: CheckpointReader  # the folder's other files, checked against its manifest

    def apply(self) -> RunState:
        """Load model, optimiser, schedule and random states; return the run state."""
        self.training.apply()
        set_rng_state(self.rng)
        return self.run_state


def read_checkpoint(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    scaler: Any = None,
    process_index: int = 0,
    sharded: bool = False,
) -> Checkpoint:
    """Read the checkpoint in ``folder`` and check every part of it against the run's
    ``model`` (unwrapped), ``optimizer`` (the torch optimiser), ``scheduler`` and ``scaler``;
    nothing is changed. ``sharded``: read process ``process_index``'s own slices (FSDP).

    Raises:
        CheckpointError: anything missing, corrupt or not fitting the run.
    """
    data = read_json_file(folder / STATE_FILE, "run state")
    if isinstance(data, dict) and "files" not in data:
        raise CheckpointError(
            f"{folder} was written by an earlier pb-adapters, whose checkpoints keep optimiser, "
            "schedule and random states in pickle files; those are never loaded. Start a new run "
            "(its first epoch checkpoint can be resumed)"
        )
    run_state = RunState.from_checked_dict(data)
    reader = CheckpointReader(folder, data.get("files"))
    shard = process_index if sharded else None
    best = best_state_file(shard)
    if reader.has(best):
        tensors, _ = reader.tensors(best, "best epoch's state", best_state_spec(model))
        if not all(
            bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()
        ):
            raise CheckpointError(f"{folder / best} holds non-finite values")
        run_state.best_state = tensors
    elif run_state.best_key is not None:
        raise CheckpointError(f"{folder} records a best epoch but lacks {best}")
    training = read_training_state(reader, model, optimizer, scheduler, scaler, shard=shard)
    if training.schedule_step != run_state.global_step:
        raise CheckpointError(
            f"{folder}: the schedule is at step {training.schedule_step}, the run state at "
            f"{run_state.global_step}; the files come from different checkpoints"
        )
    rng = read_rng_state(reader, process_index)
    return Checkpoint(folder, run_state, training, rng, reader)


def first_usable_checkpoint(
    accelerator: Any,
    candidates: list[Path],
    *,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    also: Callable[[Checkpoint], None] | None = None,
) -> Checkpoint:
    """The first of ``candidates`` that every process could read and check
    (:func:`read_checkpoint`, then ``also(checkpoint)``, which raises
    :class:`~pb_adapters.training.errors.CheckpointError` for a folder it cannot use), not
    applied yet.

    An unusable one is reported and the next (older) one tried; the processes agree on each
    verdict, so all of them resume from the same checkpoint or all of them fail.

    Raises:
        CheckpointError: none is usable; the message gives each one's problem.
    """
    acc = accelerator
    problems: list[str] = []
    for folder in candidates:
        found: Checkpoint | None = None
        try:
            found = read_checkpoint(
                folder,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=getattr(acc, "scaler", None),
                process_index=acc.process_index,
                sharded=uses_fsdp(acc),
            )
            if also is not None:
                also(found)
        except CheckpointError as err:
            found = None
            problems.append(f"{folder.name}: {err}")
        everywhere = acc.gather(torch.tensor([int(found is not None)], device=acc.device))
        if found is not None and bool(everywhere.all()):
            if problems:
                acc.print(f"skipped unusable checkpoint(s): {'; '.join(problems)}")
                acc.print(f"falling back to the previous complete checkpoint, {folder}")
            return found
        if found is not None:
            problems.append(f"{folder.name}: unusable on another process")
    if len(problems) == 1:
        raise CheckpointError(problems[0])
    raise CheckpointError("no usable checkpoint to resume from: " + "; ".join(problems))
