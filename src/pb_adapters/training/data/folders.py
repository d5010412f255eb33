"""Image folders: ``root/<class>/<image>``, or split folders ``root/<split>/<class>/<image>``.

Images are identified by the file behind their path (device and inode, through symbolic and hard
links): a file reached twice is used once, a link that loops back is refused, and no file may
appear under two classes or in two splits.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pb_adapters.training.data.datasets import DataError, ImageFileDataset
from pb_adapters.training.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    check_image_file,
)
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


@dataclass
class _Scan:
    """The images found under one folder of classes."""

    paths: list[str] = field(default_factory=list)
    # the file behind each path (device, inode): links and hard links resolve to one identity
    identity: list[tuple[int, int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: int = 0


def _class_files(folder: Path) -> Iterator[Path]:
    """Every file under ``folder`` (hidden ones excepted), following links to folders.

    A link back to a folder on the current path (a loop) raises :class:`DataError`; a folder
    reached twice by other links is read once.
    """
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = os.path.realpath(dirpath)
        walked.add(here)
        keep = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            target = os.path.realpath(os.path.join(dirpath, name))
            if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
                raise DataError(
                    f"{Path(dirpath) / name} links back to {target}, a folder it is inside of: a "
                    "symlink loop would repeat the images without end; remove the link"
                )
            if target not in walked:
                keep.append(name)
        dirnames[:] = keep
        for fname in sorted(filenames):
            if not fname.startswith("."):
                yield Path(dirpath) / fname


def _scan(
    root: Path, classes: Sequence[str], found: list[str], strict: bool, verify: bool, max_pixels
) -> _Scan:
    """Read the class folders ``found`` under ``root``; every image once, by resolved path."""
    class_index = {c: i for i, c in enumerate(classes)}
    scan = _Scan()
    owner: dict[tuple[int, int], tuple[str, Path]] = {}  # file -> its class folder, first path
    for cls in found:
        if cls not in class_index:
            raise DataError(f"{root / cls} is not one of the known classes {list(classes)}")
        count = 0
        for path in _class_files(root / cls):
            if not path.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            try:
                stat = path.stat()
            except OSError as err:  # a dangling link: unreadable, like a file that cannot be read
                if strict:
                    raise DataError(f"cannot read image {path}: {err}") from None
                scan.unreadable.append((path, f"{type(err).__name__}: {err}"))
                continue
            key = (stat.st_dev, stat.st_ino)
            if key in owner:
                first_class, first = owner[key]
                if first_class != cls:
                    raise DataError(
                        f"{path} is the same file as {first} (class {first_class!r}): one image "
                        "cannot have two labels"
                    )
                scan.duplicates += 1
                continue
            reason = check_image_file(path, max_pixels) if verify else None
            if reason is not None:
                if strict:
                    raise DataError(f"cannot read image {path}: {reason}")
                scan.unreadable.append((path, reason))
                continue
            owner[key] = (cls, path)
            scan.paths.append(str(path))
            scan.identity.append(key)
            scan.labels.append(class_index[cls])
            count += 1
        if count == 0:
            raise DataError(
                f"class folder {root / cls} holds no readable images "
                f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add images"
            )
    return scan


def _found_classes(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_image_folder(
    root: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    *,
    strict: bool = False,
    verify: bool = True,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[list[str], list[int], list[str], int]:
    """List the images under ``root/<class>/...``.

    Args:
        root: folder whose sub-folders are the classes (nested folders inside a class are read,
            links to folders followed).
        classes: the class names to use, in label order; default: the sorted sub-folder names.
        strict: raise :class:`DataError` on the first unreadable image instead of skipping it.
        verify: check every image's header/structure while scanning.
        max_pixels: refuse images larger than this (width x height; ``None``: no bound).

    Returns:
        ``(paths, labels, classes, num_skipped)``. A file reached twice (through links) is
        listed once, with a warning.

    Raises:
        DataError: no class folders, a class folder without readable images, a symlink loop,
            one file under two classes, an image above ``max_pixels`` or (strict) an
            unreadable image.
    """
    root = Path(root)
    scan, classes = _scan_folder(root, classes, strict=strict, verify=verify, max_pixels=max_pixels)
    return scan.paths, scan.labels, classes, len(scan.unreadable)


def _scan_folder(
    root: Path, classes: Sequence[str] | None, **options: Any
) -> tuple[_Scan, list[str]]:
    """:func:`scan_image_folder` with the full result; warns about skipped and repeated files."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    found = _found_classes(root)
    classes = list(found if classes is None else classes)
    if not classes:
        raise DataError(
            f"{root} has no class sub-folders; expected root/<class>/<image> "
            f"(or root/train/<class>/<image>)"
        )
    scan = _scan(root, classes, found, options["strict"], options["verify"], options["max_pixels"])
    bad = scan.unreadable
    if bad:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) under {root}: {shown}{more}", stacklevel=3
        )
    if scan.duplicates:
        warnings.warn(
            f"{scan.duplicates} file(s) under {root} are the same file as another image (links); "
            "each is used once",
            stacklevel=3,
        )
    if not scan.paths:
        raise DataError(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return scan, classes


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    verify: bool = True,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> DatasetSplits:
    """Load an image folder as :class:`DatasetSplits`.

    ``root`` is either ``root/<class>/<image>`` (validation and test are carved out with
    :func:`stratified_split`) or has split sub-folders ``train``, ``val``/``valid``/``validation``
    and/or ``test``, each laid out as ``<split>/<class>/<image>``. Class indices follow the sorted
    union of class folder names across splits.

    Splits a training run cannot use (a single class, an empty split) are refused by
    :func:`~pb_adapters.training.data.splits.check_splits`, which the training command line
    calls; evaluating one class alone is fine.

    Raises:
        DataError: besides what :func:`scan_image_folder` refuses: a file in two split folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    split_dirs: dict[str, Path] = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name.lower() in _SPLIT_DIR_NAMES:
            split_dirs.setdefault(_SPLIT_DIR_NAMES[d.name.lower()], d)
    options = {"strict": strict, "verify": verify, "max_pixels": max_pixels}
    if not split_dirs:
        split_dirs = {"train": root}
        classes = _found_classes(root)
    elif "train" not in split_dirs:
        raise DataError(f"{root} has split folders {sorted(split_dirs)} but no 'train' folder")
    else:
        classes = sorted({c for d in split_dirs.values() for c in _found_classes(d)})
    scans = {split: _scan_folder(d, classes, **options)[0] for split, d in split_dirs.items()}
    _refuse_shared_files(scans)
    loaded = {
        split: ImageFileDataset(scan.paths, scan.labels, strict=strict, max_pixels=max_pixels)
        for split, scan in scans.items()
    }
    notes: list[str] = []
    train, validation, test = complete_splits(
        loaded, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, notes=notes
    )
    n_bad = sum(len(scan.unreadable) for scan in scans.values())
    if n_bad:
        notes.append(f"{n_bad} unreadable image(s) skipped")
    repeated = sum(scan.duplicates for scan in scans.values())
    if repeated:
        notes.append(f"{repeated} file(s) reached twice through links used once")
    return DatasetSplits(
        train, validation, test, dict(enumerate(classes)), name=root.name or str(root), notes=notes
    )


def _refuse_shared_files(scans: dict[str, _Scan]) -> None:
    """No file (followed through links) may be in two split folders: it would be tested on
    while trained on."""
    seen: dict[tuple[int, int], str] = {}
    for split, scan in scans.items():
        for path, key in zip(scan.paths, scan.identity, strict=True):
            if seen.setdefault(key, split) != split:
                raise DataError(
                    f"{path} is the same file as an image in the {seen[key]} split folder; an "
                    "image must be in one split only"
                )
