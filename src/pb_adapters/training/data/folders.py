"""Image folders: ``root/<class>/<image>``, or split folders ``root/<split>/<class>/<image>``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from pb_adapters.training.data.datasets import DataError, ImageFileDataset
from pb_adapters.training.data.images import IMAGE_EXTENSIONS, check_image_file
from pb_adapters.training.data.splits import DatasetSplits, complete_splits

__all__ = ["load_image_folder", "scan_image_folder"]

# Folder names recognised as splits in an image folder, mapped to our split names.
_SPLIT_DIR_NAMES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


def scan_image_folder(
    root: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    *,
    strict: bool = False,
    verify: bool = True,
) -> tuple[list[str], list[int], list[str], int]:
    """List the images under ``root/<class>/...``.

    Args:
        root: folder whose sub-folders are the classes (nested folders inside a class are read).
        classes: the class names to use, in label order; default: the sorted sub-folder names.
        strict: raise :class:`DataError` on the first unreadable image instead of skipping it.
        verify: check every image's header/structure while scanning.

    Returns:
        ``(paths, labels, classes, num_skipped)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    if not classes:
        raise DataError(
            f"{root} has no class sub-folders; expected root/<class>/<image> "
            f"(or root/train/<class>/<image>)"
        )
    class_index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    bad: list[tuple[Path, str]] = []
    for cls in found:
        if cls not in class_index:
            raise DataError(f"{root / cls} is not one of the known classes {list(classes)}")
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.startswith(".") or not fname.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = Path(dirpath) / fname
                reason = check_image_file(path) if verify else None
                if reason is not None:
                    if strict:
                        raise DataError(f"cannot read image {path}: {reason}")
                    bad.append((path, reason))
                    continue
                paths.append(str(path))
                labels.append(class_index[cls])
    if bad:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) under {root}: {shown}{more}", stacklevel=2
        )
    if not paths:
        raise DataError(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return paths, labels, list(classes), len(bad)


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    verify: bool = True,
) -> DatasetSplits:
    """Load an image folder as :class:`DatasetSplits`.

    ``root`` is either ``root/<class>/<image>`` (validation and test are carved out with
    :func:`stratified_split`) or has split sub-folders ``train``, ``val``/``valid``/``validation``
    and/or ``test``, each laid out as ``<split>/<class>/<image>``. Class indices follow the sorted
    union of class folder names across splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    split_dirs: dict[str, Path] = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name.lower() in _SPLIT_DIR_NAMES:
            split_dirs.setdefault(_SPLIT_DIR_NAMES[d.name.lower()], d)
    notes: list[str] = []
    if not split_dirs:
        paths, labels, classes, n_bad = scan_image_folder(root, strict=strict, verify=verify)
        full = ImageFileDataset(paths, labels, strict=strict)
        train, validation, test = complete_splits(
            {"train": full},
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            notes=notes,
        )
    else:
        if "train" not in split_dirs:
            raise DataError(f"{root} has split folders {sorted(split_dirs)} but no 'train' folder")
        classes = sorted(
            {
                c.name
                for d in split_dirs.values()
                for c in d.iterdir()
                if c.is_dir() and not c.name.startswith(".")
            }
        )
        loaded: dict[str, ImageFileDataset] = {}
        n_bad = 0
        for split, d in split_dirs.items():
            paths, labels, _, bad = scan_image_folder(d, classes, strict=strict, verify=verify)
            loaded[split] = ImageFileDataset(paths, labels, strict=strict)
            n_bad += bad
        train, validation, test = complete_splits(
            loaded, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, notes=notes
        )
    if n_bad:
        notes.append(f"{n_bad} unreadable image(s) skipped")
    return DatasetSplits(
        train, validation, test, dict(enumerate(classes)), name=root.name or str(root), notes=notes
    )
