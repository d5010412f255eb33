"""Create a base model from a name, as timm and transformers users name them.

Used when :meth:`pb_adapters.PiggybackModel.from_pretrained` is given the base as a string:

* a timm Hub id, ``"hf-hub:timm/resnet50.a1_in1k"`` (a revision as ``"...@v2"`` or ``revision=``);
* a timm registry name, ``"resnet50.a1_in1k"`` (timm fetches its weights from the Hub repo its
  pretrained config names; ``revision=`` pins that repo's revision);
* a timm folder, ``"local-dir:/path"`` or a folder written by ``timm.models.save_for_hf``;
* a transformers model id or folder, ``"google/vit-base-patch16-224"``;
* a name registered with :func:`pb_adapters.base_registry.register_base`, such as the offline demo
  backbone ``"pb-adapters-demo:tf_efficientnet_lite0"`` (asked before the libraries are).

Downloads go through each library's own Hub code, which uses ``huggingface_hub``: the endpoint
(``HF_ENDPOINT``), the cache, ``HF_HUB_OFFLINE`` and the saved token behave as usual. timm takes
no ``token`` argument; for a private timm base, set ``HF_TOKEN`` or run ``hf auth login``.

A transformers base created here from the Hub remembers the commit it was loaded from (as
transformers 4 did in ``config._commit_hash``), so an adapter trained on it records the exact
base revision. Every base created here is marked as holding its checkpoint's weights
(:func:`pb_adapters.provenance.mark_pretrained`), so adapters name that checkpoint as their base
for as long as the weights stay unchanged.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from .base_registry import get_base, is_registered_base
from .errors import HubError, PbAdaptersError
from .hub import is_local_reference
from .hub_errors import hub_failure
from .provenance import mark_pretrained, own_claim, pretrained_source, recorded_name
from .targeting import model_family
from .utils.names import TIMM_HUB_PREFIXES, split_revision

__all__ = ["guess_library", "load_base_model"]

_TIMM_LOCAL_PREFIX = "local-dir:"
_LIBRARIES = ("timm", "transformers")


def _folder_library(path: Path) -> str | None:
    """``"timm"`` or ``"transformers"`` for a model folder holding ``config.json``, else None.

    timm writes ``config.json`` with ``architecture`` and ``pretrained_cfg`` (and no
    ``model_type``); transformers always writes ``model_type``.
    """
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        return None
    if (path / "pretrained_cfg.json").is_file():
        return "timm"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "transformers"  # let transformers report the broken file
    if isinstance(data, dict) and "model_type" not in data and "architecture" in data:
        return "timm"
    return "transformers"


def guess_library(name_or_path: str) -> str:
    """The library that creates ``name_or_path``: ``"timm"`` or ``"transformers"``.

    timm: ``hf-hub:`` / ``local-dir:`` names, folders in timm's format, and names in timm's
    registry (``timm.is_model``). Everything else is treated as a transformers id or folder.
    """
    if name_or_path.startswith((*TIMM_HUB_PREFIXES, _TIMM_LOCAL_PREFIX)):
        return "timm"
    folder = _folder_library(Path(name_or_path).expanduser())
    if folder is not None:
        return folder
    if Path(name_or_path).expanduser().is_dir():
        return "transformers"  # a folder without config.json: transformers says what is missing
    import timm

    return "timm" if timm.is_model(name_or_path) else "transformers"


def _timm_source(
    name: str, revision: str | None
) -> tuple[str, dict[str, Any] | None, str | None, str | None]:
    """What to pass to ``timm.create_model``: name, pretrained_cfg overlay, Hub repo, revision.

    The last two only describe the source for error messages.
    """
    for prefix in TIMM_HUB_PREFIXES:
        if name.startswith(prefix):
            repo_id, pinned = split_revision(name[len(prefix) :])
            if pinned is not None and revision is not None and pinned != revision:
                raise PbAdaptersError(
                    f"the base {name!r} names revision {pinned!r} but revision {revision!r} was "
                    "asked for: give the revision once"
                )
            revision = pinned or revision
            suffix = f"@{revision}" if revision else ""
            return f"hf-hub:{repo_id}{suffix}", None, repo_id, revision
    if name.startswith(_TIMM_LOCAL_PREFIX):
        return name, None, None, None  # a revision means nothing for a local folder
    path = Path(name).expanduser()
    if _folder_library(path) == "timm":
        return f"{_TIMM_LOCAL_PREFIX}{path}", None, None, None
    import timm

    if not timm.is_model(name) and "/" in name and not path.exists():
        # Recorded as timm but given without prefix: a Hub repo id in timm's format.
        return _timm_source(f"hf-hub:{name}", revision)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name) if timm.is_model(name) else None
    repo_id, _ = split_revision(getattr(cfg, "hf_hub_id", None) or "")
    if revision is None:
        return name, None, repo_id or None, None
    if not repo_id:
        raise PbAdaptersError(
            f"timm's {name!r} has no Hub repository, so revision {revision!r} cannot apply: pass "
            "the base as 'hf-hub:<repo id>' or as a model object"
        )
    # Keep the registry's architecture and config; take the weights from that revision.
    return name, {"hf_hub_id": f"{repo_id}@{revision}"}, repo_id, revision


def _check_local_reference(name: str) -> None:
    """Refuse a path-like name (``./x``, ``/x``, ``~/x``, ``a/b/c``) that is not a folder."""
    path = Path(name).expanduser()
    if is_local_reference(name) and not path.is_dir():
        state = "is a file, not a model folder" if path.exists() else "does not exist"
        raise PbAdaptersError(
            f"the base model folder {name!r} {state}: pass a folder written by save_pretrained "
            "(transformers) or timm.models.save_for_hf, or a Hub model id"
        )


def _resolve_commit(
    repo_id: str, revision: str | None, token: str | bool | None, cache_dir: str | None
) -> Any:
    """The Hub revision pinned to its commit (a ``ResolvedRevision``), or None if unknown.

    Best effort, as in transformers: on any failure (not a repo id, missing or private
    repository, unknown revision, offline, network) the library's own loading path runs and
    reports the problem, or recovers from the cache.
    """
    from huggingface_hub import HfApi

    try:
        return HfApi().resolve_revision(
            repo_id, revision=revision, token=token, cache_dir=cache_dir
        )
    except Exception:
        return None


def _create_timm(
    create_name: str, overlay: dict[str, Any] | None, cache_dir: str | None
) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {}
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    if overlay is not None:
        kwargs["pretrained_cfg_overlay"] = overlay
    return timm.create_model(create_name, pretrained=True, **kwargs)


def _create_transformers(
    name: str, revision: str | None, token: str | bool | None, cache_dir: str | None
) -> nn.Module:
    from transformers import AutoModelForImageClassification

    pinned = None
    if not Path(name).expanduser().exists():
        pinned = _resolve_commit(name, revision, token, cache_dir)
    model = AutoModelForImageClassification.from_pretrained(
        name, revision=pinned or revision, token=token, cache_dir=cache_dir
    )
    commit = getattr(pinned, "resolved", None)
    if commit and getattr(model.config, "_commit_hash", None) is None:
        # transformers >= 5 no longer records it; PiggybackModel reads it as the base revision.
        # transformers never serialises this key, so the model saves exactly as before.
        model.config._commit_hash = commit
    return model


def _close_timm_names(name: str) -> list[str]:
    import timm

    candidates = timm.list_models() + timm.list_pretrained()
    return difflib.get_close_matches(name, candidates, n=3, cutoff=0.8)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_base_model(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    library: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Create the pretrained base model called ``name_or_path``, in eval mode.

    Args:
        name_or_path: A timm name (``hf-hub:`` id, ``local-dir:`` folder or registry name), a
            folder written by timm or transformers, a transformers Hub id, or
            a name registered with :func:`pb_adapters.base_registry.register_base` (such as
            ``"pb-adapters-demo:tf_efficientnet_lite0"``, the offline demo backbone).
        revision: The Hub branch, tag or commit to create it at. timm: appended to an ``hf-hub:``
            id as ``@revision`` (an id that already names another revision is refused), or, for
            a registry name, applied to the Hub repository its weights come from. Ignored for
            local folders.
        library: ``"timm"`` or ``"transformers"`` when known (e.g. from the artifact); ``None``
            or ``"auto"`` guesses with :func:`guess_library`.
        token: Hub token for private or gated transformers bases. timm reads ``HF_TOKEN`` or the
            saved login instead.
        cache_dir: Hub cache folder.

    Raises:
        HubError: the Hub refused or could not serve the model (missing or private repository,
            unknown revision, offline with an empty cache, network failure).
        PbAdaptersError: the name is neither a timm nor a transformers model, the library is not
            supported, or creating the model failed (the message says which library was used
            and why).
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise PbAdaptersError(
            f"the base model must be named by a non-empty string, got {name_or_path!r}"
        )
    name = name_or_path.strip()
    if is_registered_base(name):  # e.g. the offline demo backbone, shipped on PyPI
        model = get_base(name).loader().eval()
        source = pretrained_source(model)
        return model if source and source.name_or_path == name else mark_pretrained(model, name)
    if library in (None, "auto"):
        which = guess_library(name)
    elif library in _LIBRARIES:
        which = library
    elif library == "torch":
        raise PbAdaptersError(
            f"the adapter was made for a plain PyTorch model ({name!r}), which cannot be created "
            "from a name: create it yourself and pass the model object"
        )
    else:
        raise PbAdaptersError(f"unknown library {library!r}: use 'timm' or 'transformers'")
    cache = None if cache_dir is None else str(cache_dir)

    repo_id: str | None = name
    asked = revision
    try:
        if which == "timm":
            create_name, overlay, repo_id, revision = _timm_source(name, revision)
            model = _create_timm(create_name, overlay, cache)
        else:
            _check_local_reference(name)
            model = _create_transformers(name, revision, token, cache)
    except PbAdaptersError:
        raise
    except Exception as err:
        raise _creation_error(name, which, library, err, repo_id, revision, token) from err
    return _mark_created(model.eval(), name, asked)


def _mark_created(model: nn.Module, name: str, asked: str | None) -> nn.Module:
    """Mark a base just created with pretrained weights as that checkpoint's (see
    :mod:`pb_adapters.provenance`), under the most exact name known for it.

    timm: its ``hf-hub:`` id and revision when the weights came from the Hub, the folder
    otherwise. transformers: the id and the commit it was created from, or the folder.
    """
    local = Path(name.removeprefix(_TIMM_LOCAL_PREFIX)).expanduser().exists()
    if model_family(model) == "transformers":
        recorded = recorded_name(name)
        revision = None if local else getattr(model.config, "_commit_hash", None) or asked
    else:
        recorded, revision = own_claim(model)  # an hf-hub: id, or a local-dir: folder
        if recorded is None:  # weights from a URL or file timm's registry names
            recorded, revision = name, None
    return mark_pretrained(
        model,
        recorded,
        revision=revision,
        aliases=(name,),
        revision_aliases=() if local else (asked,),
    )


def _creation_error(
    name: str,
    which: str,
    library: str | None,
    err: BaseException,
    repo_id: str | None,
    revision: str | None,
    token: str | bool | None,
) -> PbAdaptersError:
    """The one-line error for a base model that could not be created."""
    hub = hub_failure(err, repo_id=repo_id, revision=revision, token=token) if repo_id else None
    reason = str(hub) if hub is not None else _first_line(err)
    if which == "transformers" and library in (None, "auto"):
        close = [] if "/" in name or ":" in name else _close_timm_names(name)
        also = f" (did you mean {', '.join(close)}?)" if close else ""
        what = f"it is not in timm's registry{also} and transformers could not load it"
    else:
        what = f"{which} could not create it"
    note = ""
    if which == "timm" and isinstance(token, str) and hub is not None:
        note = " timm ignores token=: set HF_TOKEN or run `hf auth login`."
    message = (
        f"could not create the base model {name!r}: {what}: {reason.rstrip('.')}.{note} Check "
        "the name and revision, or create the base yourself and pass the model object."
    )
    return HubError(message) if hub is not None else PbAdaptersError(message)
