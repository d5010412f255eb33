"""Hugging Face Hub integration: find, download and push adapter artifacts.

A thin layer over ``huggingface_hub``. It adds three things the model code needs:

* names are checked before anything is touched (repo ids, revisions, subfolders), so a hostile
  or mistyped ``subfolder`` can never reach outside the cache or the repository;
* only the artifact files are downloaded, and both come from the same commit;
* every failure becomes a :class:`~pb_adapters.errors.HubError` with a one-line message that says
  what to do (the original exception is chained as ``__cause__``).

Configuration is read when a function is called, not when this module is imported: the endpoint
(``HF_ENDPOINT`` / ``huggingface_hub.constants.ENDPOINT``), offline mode (``HF_HUB_OFFLINE``),
the cache (``HF_HUB_CACHE`` / ``HF_HOME``) and the token (``token=``, ``HF_TOKEN`` or
``hf auth login``) all behave as in ``huggingface_hub``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath
from typing import Any

from .card import CARD_NAME, HUB_CONFIG_NAME, PLOT_NAME, render_card_files
from .errors import ArtifactError, HubError, PbAdaptersError
from .hub_errors import hub_failure, hub_offline, list_repo_level, translate
from .serialization import (
    ARTIFACT_CONFIG_NAME,
    ARTIFACT_WEIGHTS_NAME,
    MAX_CONFIG_BYTES,
    declared_weights_limit,
    read_adapter_config,
    read_artifact_files,
    storage_error,
)
from .utils.files import folder_lock

__all__ = [
    "ARTIFACT_FILES",
    "CARD_FILES",
    "download_adapter",
    "hub_failure",
    "is_local_reference",
    "push_folder_to_hub",
    "resolve_adapter_folder",
    "validate_hub_target",
    "validate_revision",
    "validate_subfolder",
]

ARTIFACT_FILES: tuple[str, ...] = (ARTIFACT_CONFIG_NAME, ARTIFACT_WEIGHTS_NAME)
"""The files a task needs to be loaded."""

CARD_FILES: tuple[str, ...] = (CARD_NAME, PLOT_NAME, HUB_CONFIG_NAME)
"""The files that describe a task on the Hub (model card, its plot, the download-count config)."""

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_REVISION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_MAX_SUBFOLDER_LEN = 200
_MAX_SUBFOLDER_DEPTH = 8
_MAX_LISTED = 12
# A README, its plot or the small config.json: anything larger is not a card pb-adapters wrote.
_MAX_CARD_FILE_BYTES = 16 * 1024 * 1024


# ---------------------------------------------------------------------------- name checks
def validate_subfolder(subfolder: str | PurePath | None) -> str | None:
    """Check a subfolder name and return it in canonical form (``None`` for the repo root).

    Accepted: relative POSIX paths of at most 8 segments and 200 characters, each segment made of
    ASCII letters, digits, ``_``, ``-`` and ``.`` that does not start with ``.`` or ``-``; one
    trailing ``/`` is dropped. Refused: ``..`` and ``.`` segments, absolute paths, backslashes,
    drive letters, empty segments, non-ASCII or control characters.

    Raises:
        HubError: the name is refused; nothing has been read or written.
    """
    if subfolder is None:
        return None
    if isinstance(subfolder, PurePath):
        subfolder = subfolder.as_posix()
    if not isinstance(subfolder, str):
        raise HubError(f"subfolder must be a string, not {type(subfolder).__name__}")
    if subfolder in ("", "."):
        return None
    shown = ascii(subfolder[:60]) + ("..." if len(subfolder) > 60 else "")
    if len(subfolder) > _MAX_SUBFOLDER_LEN:
        raise HubError(f"subfolder {shown} is longer than {_MAX_SUBFOLDER_LEN} characters")
    if subfolder.startswith("/") or "\\" in subfolder:
        raise HubError(f"subfolder {shown} must be a relative path with '/' separators")
    parts = subfolder.removesuffix("/").split("/")
    if len(parts) > _MAX_SUBFOLDER_DEPTH:
        raise HubError(f"subfolder {shown} is nested more than {_MAX_SUBFOLDER_DEPTH} levels deep")
    for part in parts:
        if not _SEGMENT_RE.fullmatch(part):
            raise HubError(
                f"subfolder {shown} is not allowed: use letters, digits, '_', '-' and '.', "
                "with no '..', empty or hidden segments"
            )
    return "/".join(parts)


def validate_revision(revision: str | None) -> str | None:
    """Check a branch, tag, ``refs/pr/N`` or commit id; return it unchanged (``None`` = main).

    Raises:
        HubError: the revision contains characters or segments a git ref cannot have.
    """
    if revision is None:
        return None
    if not isinstance(revision, str):
        raise HubError(f"revision must be a string, not {type(revision).__name__}")
    bad = (
        not _REVISION_RE.fullmatch(revision)
        or ".." in revision
        or "//" in revision
        or revision.endswith(("/", ".", ".lock"))
    )
    if bad:
        shown = ascii(revision[:60]) + ("..." if len(revision) > 60 else "")
        raise HubError(f"revision {shown} is not a valid branch, tag or commit id")
    return revision


def _validate_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    cause: HFValidationError | None = None
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        cause = err
    # Our own ASCII check too: older huggingface_hub releases (1.3 among them) let non-ASCII
    # letters, a trailing newline and long namespaces through, and a refused name must never
    # reach the Hub or the token file.
    parts = repo_id.split("/")
    strict = len(parts) <= 2 and all(_SEGMENT_RE.fullmatch(part) for part in parts)
    if cause is not None or not strict:
        raise HubError(
            f"{repo_id[:100]!a} is neither an existing local folder nor a valid Hub repo id "
            "('namespace/name')"
        ) from cause
    return repo_id


def validate_hub_target(
    repo_id: str, *, revision: str | None = None, subfolder: str | None = None
) -> tuple[str | None, str | None]:
    """Check a repo id, revision and subfolder to write to; return ``(revision, subfolder)``.

    Raises:
        HubError: one of the names is refused; nothing has been read or written.
    """
    sub = validate_subfolder(subfolder)
    rev = validate_revision(revision)
    if not isinstance(repo_id, str):
        raise HubError(f"repo_id must be a string, not {type(repo_id).__name__}")
    _validate_repo_id(repo_id)
    return rev, sub


def is_local_reference(reference: str | os.PathLike[str]) -> bool:
    """Whether ``reference`` names a local folder rather than a Hub repository.

    True for ``os.PathLike`` objects, existing directories, and strings that can only be paths
    (absolute, ``./``, ``../``, ``~``, backslashes). A string such as ``"user/task"`` is a Hub id
    unless a folder of that name exists in the working directory.
    """
    if isinstance(reference, os.PathLike):
        return True
    if Path(reference).is_dir():
        return True
    return (
        reference.startswith(("/", "./", "../", "~", "."))
        or "\\" in reference
        or reference.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:", reference))
    )


# ---------------------------------------------------------------------------- downloading
def _local_folder(reference: str | os.PathLike[str], subfolder: str | None) -> Path:
    folder = Path(reference).expanduser()
    if subfolder:
        folder = folder / subfolder
    if not folder.is_dir():
        raise ArtifactError(
            f"{folder} is not a folder: pass an artifact folder written by save_pretrained or a "
            "Hub repo id"
        )
    return folder


def _commit_of(snapshot_file: str, subfolder: str | None) -> str | None:
    """The commit id of the cache snapshot holding ``snapshot_file`` (None if not a snapshot)."""
    depth = len(subfolder.split("/")) if subfolder else 0
    parents = Path(snapshot_file).parents
    if depth >= len(parents):
        return None
    name = parents[depth].name
    return name if _COMMIT_RE.fullmatch(name) else None


def _remote_size(
    api: Any, repo_id: str, filename: str, sub: str | None, revision: str | None
) -> tuple[int | None, str | None]:
    """``(size, commit)`` of a file on the Hub, from a HEAD request (nothing is downloaded)."""
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo_id, filename, subfolder=sub, revision=revision, endpoint=api.endpoint)
    meta = api.get_hf_file_metadata(url=url)
    return meta.size, meta.commit_hash


def _refuse_size(repo_id: str, path: str, size: int | None, limit: int, why: str) -> None:
    """Refuse a remote file larger than ``limit`` bytes (before it is downloaded)."""
    if size is not None and size > limit:
        raise ArtifactError(
            f"{path} of {repo_id} is {size:,} bytes, more than the {limit:,} bytes {why}; "
            "it was not downloaded"
        )


def resolve_adapter_folder(
    repo_id_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    weights_limit: Callable[[dict[str, Any]], int] | None = None,
) -> Path:
    """Return a local folder holding ``adapter_config.json`` and ``adapter_model.safetensors``.

    A local folder is returned as is (joined with ``subfolder``). Otherwise the two artifact files
    are fetched from the Hub repository ``repo_id_or_path`` (at ``revision``, under
    ``subfolder``) into the Hub cache, both from the same commit, and their snapshot folder is
    returned. Cached files are used without a download when they are current, and whenever
    ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``.

    Sizes are checked from the Hub's metadata before each download: the config may have at most
    8 MiB, and the weights file no more than its config's records explain (or ``weights_limit``
    returns for the validated config). A larger file is refused without being downloaded or
    cached.

    Args:
        repo_id_or_path: a folder, or a Hub repo id such as ``"user/cars-mask"``.
        revision: branch, tag or commit id (default: ``main``).
        subfolder: folder inside the repository (or local folder) that holds the task.
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the saved login, ``False`` sends none.
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE``).
        local_files_only: never touch the network; use the cache only.
        weights_limit: called with the downloaded, validated config; returns the largest weights
            file to accept (default: :func:`~pb_adapters.serialization.declared_weights_limit`).

    Raises:
        HubError: a name is invalid, or the download failed (the message says why and what to do).
        ArtifactError: a local path that is not a folder; a config that is invalid or a file
            larger than allowed.
    """
    sub = validate_subfolder(subfolder)
    rev = validate_revision(revision)
    if is_local_reference(repo_id_or_path):
        return _local_folder(repo_id_or_path, sub)
    repo_id = _validate_repo_id(str(repo_id_or_path))

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    kwargs: dict[str, Any] = {
        "subfolder": sub,
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "local_files_only": local_files_only,
        "token": token,
    }
    online = not (local_files_only or hub_offline())
    prefix = f"{sub}/" if sub else ""
    current = ARTIFACT_CONFIG_NAME
    try:
        commit = None
        if online:
            size, commit = _remote_size(api, repo_id, ARTIFACT_CONFIG_NAME, sub, rev)
            _refuse_size(repo_id, prefix + current, size, MAX_CONFIG_BYTES, "a config may have")
        # At the revision asked for (not the commit), so the cache maps it for offline use.
        config_path = api.hf_hub_download(repo_id, ARTIFACT_CONFIG_NAME, revision=rev, **kwargs)
        # Pin the second file to the commit the first came from: a push in between must not
        # pair a config with the weights of another version.
        pinned = _commit_of(config_path, sub) or commit or rev
        current = ARTIFACT_WEIGHTS_NAME
        if online:
            data = read_adapter_config(Path(config_path).parent)
            limit = (weights_limit or declared_weights_limit)(data)
            size, _ = _remote_size(api, repo_id, ARTIFACT_WEIGHTS_NAME, sub, pinned)
            _refuse_size(repo_id, prefix + current, size, limit, "its config's records explain")
        weights_path = api.hf_hub_download(
            repo_id, ARTIFACT_WEIGHTS_NAME, revision=pinned, **kwargs
        )
    except PbAdaptersError:
        raise
    except Exception as err:
        raise translate(
            err,
            repo_id=repo_id,
            revision=rev,
            filename=current,
            subfolder=sub,
            token=token,
            local_files_only=local_files_only,
        ) from err
    folder = Path(config_path).parent
    if Path(weights_path).parent != folder:  # never expected from the cache layout
        raise HubError(f"downloaded files of {repo_id} landed in different folders")
    return folder


def _check_remote_sizes(
    api: Any,
    repo_id: str,
    names: tuple[str, ...],
    sub: str | None,
    rev: str | None,
    cache_dir: str | os.PathLike[str] | None,
) -> str | None:
    """Refuse, before anything but the config is downloaded (into the cache, never into the
    caller's folder), a task whose files are larger than allowed; return the commit the files
    are then downloaded from."""
    prefix = f"{sub}/" if sub else ""
    size, commit = _remote_size(api, repo_id, ARTIFACT_CONFIG_NAME, sub, rev)
    _refuse_size(
        repo_id, prefix + ARTIFACT_CONFIG_NAME, size, MAX_CONFIG_BYTES, "a config may have"
    )
    config_path = api.hf_hub_download(
        repo_id,
        ARTIFACT_CONFIG_NAME,
        subfolder=sub,
        revision=rev,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    pinned = _commit_of(config_path, sub) or commit or rev
    limit = declared_weights_limit(read_adapter_config(Path(config_path).parent))
    listed = api.get_paths_info(repo_id, [prefix + name for name in names], revision=pinned)
    for entry in listed:
        name = PurePath(entry.path).name
        size = entry.lfs.size if getattr(entry, "lfs", None) else getattr(entry, "size", None)
        if name == ARTIFACT_WEIGHTS_NAME:
            _refuse_size(repo_id, entry.path, size, limit, "its config's records explain")
        elif name in CARD_FILES:
            _refuse_size(repo_id, entry.path, size, _MAX_CARD_FILE_BYTES, "a card file may have")
    return pinned


def download_adapter(
    repo_id: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    include_card: bool = True,
) -> Path:
    """Download one task (artifact files, and its card files if present) and return its folder.

    Only the files of the task at ``subfolder`` are fetched, never other tasks in the same
    repository. With ``local_dir`` the files are written there (keeping the ``subfolder`` layout
    below it); otherwise they stay in the Hub cache. The files' sizes are checked from the Hub's
    metadata first (see :func:`resolve_adapter_folder`; card files may have 16 MiB each): a task
    with a larger file is refused before any of its files but the config is downloaded.

    Raises:
        HubError: invalid names, or the download failed; also when the task has no
            ``adapter_config.json`` (the message lists what is there).
        ArtifactError: the config is invalid, or a file is larger than allowed.
    """
    sub = validate_subfolder(subfolder)
    rev = validate_revision(revision)
    _validate_repo_id(repo_id)
    names = ARTIFACT_FILES + (CARD_FILES if include_card else ())
    prefix = f"{sub}/" if sub else ""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        pinned = rev
        if not (local_files_only or hub_offline()):
            pinned = _check_remote_sizes(api, repo_id, names, sub, rev, cache_dir)
        root = api.snapshot_download(
            repo_id,
            revision=pinned,
            allow_patterns=[prefix + name for name in names],
            cache_dir=None if cache_dir is None else str(cache_dir),
            local_dir=None if local_dir is None else str(local_dir),
            local_files_only=local_files_only,
            token=token,
        )
    except PbAdaptersError:
        raise
    except Exception as err:
        raise translate(
            err,
            repo_id=repo_id,
            revision=rev,
            filename=ARTIFACT_CONFIG_NAME,
            subfolder=sub,
            token=token,
            local_files_only=local_files_only,
        ) from err
    folder = Path(root) / sub if sub else Path(root)
    if not (folder / ARTIFACT_CONFIG_NAME).is_file():
        listing = (
            "" if local_files_only or hub_offline() else list_repo_level(repo_id, rev, sub, token)
        )
        path = prefix + ARTIFACT_CONFIG_NAME
        raise HubError(
            f"{repo_id} has no {path}: is this a pb-adapters artifact (or the wrong subfolder)?"
            f"{listing}"
        )
    return folder


# ---------------------------------------------------------------------------- pushing
def _stage_upload(
    source: Path,
    stage: Path,
    repo_id: str,
    subfolder: str | None,
    write_card: bool,
    patterns: list[str],
) -> None:
    """Copy what to upload to ``stage``: the artifact pair, read and verified as one save's pair
    (under the folder's lock), the other files ``patterns`` select, and a generated card when
    ``write_card`` and the source has none. The source is never modified."""
    with folder_lock(source, shared=True):
        data, config, weights = read_artifact_files(source)
        (stage / ARTIFACT_WEIGHTS_NAME).write_bytes(weights)
        (stage / ARTIFACT_CONFIG_NAME).write_bytes(config)
        for path in source.iterdir():
            if (
                path.name not in ARTIFACT_FILES
                and path.is_file()
                and any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)
            ):
                shutil.copyfile(path, stage / path.name)
    if write_card and not (source / CARD_NAME).is_file():
        for name, content in render_card_files(data, weights, repo_id, subfolder=subfolder).items():
            target = stage / name
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(content)


def push_folder_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    subfolder: str | None = None,
    write_card: bool = True,
    allow_patterns: Iterable[str] | None = None,
) -> str:
    """Upload an artifact folder to ``repo_id`` (under ``subfolder``) in one commit.

    The repository is created if needed (``private`` applies only then), and so is the branch
    ``revision``. Only the artifact and card files are uploaded (``allow_patterns`` to change
    that), and stale copies of those files at the same level are deleted in the same commit, so
    the Hub folder mirrors ``folder``; other tasks in other subfolders are left alone. When
    ``folder`` has no ``README.md`` and ``write_card`` is true, a model card is generated for the
    upload without modifying ``folder``.

    Returns:
        The commit url; the returned object is a ``huggingface_hub.CommitInfo`` (a ``str``) with
        ``.oid`` and, for ``create_pr=True``, ``.pr_url``.

    The artifact pair is read under the folder's lock and verified (the config validated, the
    weights hashed and parsed) before anything is sent.

    Raises:
        ArtifactError: ``folder`` is not a complete, valid artifact folder.
        HubError: invalid names, authentication, permission or network problems.
    """
    rev, sub = validate_hub_target(repo_id, revision=revision, subfolder=subfolder)
    source = Path(folder).expanduser()
    missing = [name for name in ARTIFACT_FILES if not (source / name).is_file()]
    if missing:
        raise ArtifactError(
            f"{source} is not a complete pb-adapters artifact (missing {', '.join(missing)}): "
            "write it with save_pretrained first"
        )
    if create_pr and rev not in (None, "main"):
        raise HubError(
            "create_pr opens a pull request against main: do not combine it with revision"
        )
    patterns = (
        list(allow_patterns) if allow_patterns is not None else list(ARTIFACT_FILES + CARD_FILES)
    )

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="pb-adapters-push-") as tmp:
        # Upload a verified copy: a save into the folder meanwhile cannot mix two versions, and
        # a corrupt pair is refused before anything is sent.
        upload_from = Path(tmp)
        try:
            _stage_upload(source, upload_from, repo_id, sub, write_card, patterns)
        except OSError as err:
            raise storage_error(err, f"stage {source} for the upload") from None
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            if rev and rev != "main" and not rev.startswith("refs/"):
                api.create_branch(repo_id, branch=rev, exist_ok=True, token=token)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=upload_from,
                path_in_repo=sub,
                revision=rev,
                commit_message=commit_message
                or f"Upload pb-adapters task{f' {sub}' if sub else ''}",
                create_pr=create_pr,
                allow_patterns=patterns,
                delete_patterns=patterns,
                token=token,
            )
        except PbAdaptersError:
            raise
        except Exception as err:
            raise translate(
                err, repo_id=repo_id, revision=rev, token=token, direction="upload"
            ) from err
    return info  # type: ignore[return-value]  # CommitInfo is a str (the commit url)
