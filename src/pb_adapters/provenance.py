"""What is known about a base model's weights, and how pb-adapters knows it.

An artifact names a pretrained checkpoint as its base only when the base's weights are provably
that checkpoint's. The weights are:

* ``"pretrained"``: bit for bit those of the named checkpoint. Either the model was created by
  :func:`pb_adapters.bases.load_base_model` (or the loader of a registered base), which marks it
  with :func:`mark_pretrained`, and its fingerprint has not changed since; or its weights equal
  the checkpoint's files found on this machine (a model folder, or the Hugging Face cache), read
  without downloading anything.
* ``"modified"``: the model came from a checkpoint, but some of its weights now differ from it.
* ``"random"``: never trained. Every normalisation layer still holds the constant scale and
  shift it was initialised with (training always changes them), as after timm's
  ``create_model(..., pretrained=False)`` or transformers' ``from_config``.
* ``"unknown"``: none of the above could be shown (for example a timm model downloaded into a
  custom ``cache_dir``, or a plain PyTorch model).

Only ``"pretrained"`` bases are recorded under a checkpoint's name and revision; the others are
recorded under their architecture's name, with the checkpoint they came from (or named) beside it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .serialization import fingerprint_tensors
from .targeting import find_head_paths, find_norm_paths, iter_base_tensors, model_family
from .utils.names import TIMM_HUB_PREFIXES, normalize_base_name, split_revision

__all__ = [
    "BaseSource",
    "Provenance",
    "decide_provenance",
    "mark_pretrained",
    "pretrained_source",
    "recorded_name",
    "tensors_key",
]

_MARK = "_pb_adapters_source"  # attribute of the model that holds its BaseSource
_LOCAL_DIR = "local-dir:"
_REPO_ID = re.compile(r"^(?![.-])[A-Za-z0-9._-]{1,96}/(?![.-])[A-Za-z0-9._-]{1,96}$")
# Weight files of timm and transformers checkpoints, in the order their loaders prefer them.
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def tensors_key(items: Iterable[tuple[str, Tensor]]) -> tuple[Any, ...]:
    """Identity of the tensors' current contents: name, storage, in-place version and dtype.

    Equal keys mean the same tensors, unchanged through autograd-visible writes since the key was
    taken, so their fingerprint need not be computed again.
    """
    return tuple((n, t.data_ptr(), t._version, t.dtype) for n, t in items)


@dataclass(frozen=True)
class BaseSource:
    """The checkpoint a model was created from, as :func:`mark_pretrained` recorded it.

    Attributes:
        name_or_path: The checkpoint's name (Hub id, timm ``hf-hub:`` id, registered name or
            absolute folder path).
        revision: Its revision (a commit where known), or ``None``.
        names: Every spelling the checkpoint was asked for by (``name_or_path`` included).
        revisions: Every revision it was asked for by (``revision`` included).
        fingerprint: The fingerprint of the weights as created, the classifier head left out.
        skip: The head paths left out of ``fingerprint``.
        key: :func:`tensors_key` of those weights as created.
    """

    name_or_path: str
    revision: str | None
    names: tuple[str, ...]
    revisions: tuple[str, ...]
    fingerprint: str
    skip: tuple[str, ...]
    key: tuple[Any, ...]

    def names_checkpoint(self, name: str | None, revision: str | None) -> bool:
        """Whether ``name`` (at ``revision``) names this checkpoint; ``None`` names any."""
        same_name = name is None or canonical_name(name) in {canonical_name(n) for n in self.names}
        return same_name and (revision is None or revision in self.revisions)


def canonical_name(name: str) -> str:
    """``name`` without revision, timm's prefix spelled one way and local folders absolute."""
    return recorded_name(normalize_base_name(name))


def recorded_name(name: str) -> str:
    """How an artifact records ``name``: a local folder or file by its absolute path (never
    mistaken for a Hub id elsewhere; timm's ``local-dir:`` prefix kept), anything else as it is."""
    prefix = _LOCAL_DIR if name.startswith(_LOCAL_DIR) else ""
    path = Path(name.removeprefix(prefix)).expanduser()
    return f"{prefix}{path.resolve()}" if path.exists() else name


def mark_pretrained(
    model: nn.Module,
    name_or_path: str,
    *,
    revision: str | None = None,
    aliases: Iterable[str | None] = (),
    revision_aliases: Iterable[str | None] = (),
) -> nn.Module:
    """Record on ``model`` that its current weights are exactly those of ``name_or_path``.

    Called by the loaders of pb-adapters right after they create a pretrained base; call it
    yourself only for weights you loaded from that checkpoint unchanged. Adapters trained on
    ``model`` then record ``name_or_path`` and ``revision`` as their base while the weights keep
    this fingerprint, and record the base as ``"modified"`` once they do not. ``aliases`` are
    other names the checkpoint was asked for by (``"resnet50.a1_in1k"`` for
    ``"hf-hub:timm/resnet50.a1_in1k"``), ``revision_aliases`` other revisions (the branch that
    ``revision``, a commit, was resolved from). Returns ``model``.
    """
    skip = tuple(sorted(find_head_paths(model)))
    items = list(iter_base_tensors(model, skip=skip))
    source = BaseSource(
        name_or_path=name_or_path,
        revision=revision,
        names=tuple(dict.fromkeys([name_or_path, *(a for a in aliases if a)])),
        revisions=tuple(dict.fromkeys(r for r in (revision, *revision_aliases) if r)),
        fingerprint=fingerprint_tensors(items),
        skip=skip,
        key=tensors_key(items),
    )
    setattr(model, _MARK, source)  # a plain attribute: nn.Module keeps it in __dict__
    return model


def pretrained_source(model: nn.Module) -> BaseSource | None:
    """The checkpoint :func:`mark_pretrained` recorded for ``model``, if any."""
    source = model.__dict__.get(_MARK)
    return source if isinstance(source, BaseSource) else None


@dataclass(frozen=True)
class Provenance:
    """What an artifact records about its base's weights (see the module docstring).

    ``name_or_path`` and ``revision`` name the checkpoint for ``"pretrained"`` weights and the
    architecture otherwise; ``checkpoint`` is the checkpoint ``"modified"`` weights came from, or
    the one the user said ``"unknown"`` weights came from.
    """

    weights: str
    name_or_path: str | None
    revision: str | None = None
    checkpoint: str | None = None


def _with_revision(name: str, revision: str | None) -> str:
    return f"{name}@{revision}" if revision and "@" not in name else name


def own_claim(model: nn.Module) -> tuple[str | None, str | None]:
    """The checkpoint a model says it comes from, by its library's metadata (unverified)."""
    family = model_family(model)
    if family == "timm":
        cfg = model.pretrained_cfg
        if cfg.get("source") == "local-dir" and cfg.get("file"):
            return recorded_name(f"{_LOCAL_DIR}{cfg['file']}"), None
        hub_id, revision = split_revision(cfg.get("hf_hub_id") or "")
        return (f"{TIMM_HUB_PREFIXES[0]}{hub_id}", revision) if hub_id else (None, None)
    if family == "transformers":
        name = getattr(model, "name_or_path", None) or model.config._name_or_path or None
        return name, getattr(model.config, "_commit_hash", None)
    return None, None


def decide_provenance(
    model: nn.Module,
    *,
    head_paths: list[str],
    fingerprint: str,
    architecture: str | None,
    name: str | None = None,
    revision: str | None = None,
) -> Provenance:
    """What ``model``'s weights are, given their ``fingerprint`` (head paths left out).

    ``name`` / ``revision`` are what the user said the base is (the adapter config's
    ``base_model_name_or_path`` / ``base_model_revision``); they are recorded only when the
    weights are shown to be that checkpoint's. ``model`` must hold the base's own modules.
    """
    source = pretrained_source(model)
    if source is not None:
        return _from_mark(model, source, head_paths, fingerprint, architecture, name, revision)
    # An architecture's name (what non-pretrained bases are recorded as) claims no checkpoint.
    said = bool(name) and name != architecture
    claim_name, claim_revision = (name, revision) if said else own_claim(model)
    claim_revision = revision or claim_revision
    if claim_name:
        claim_name = recorded_name(claim_name)
        verdict = _compare_with_files(model, head_paths, claim_name, claim_revision)
        if verdict == "pretrained":
            return Provenance("pretrained", claim_name, claim_revision)
        if verdict == "modified":
            return Provenance(
                "modified", architecture, None, _with_revision(claim_name, claim_revision)
            )
    if looks_untrained(model, head_paths):
        return Provenance("random", architecture)
    # Only the user's word is worth repeating: timm names its default checkpoint in every
    # model's pretrained_cfg, pretrained or not.
    checkpoint = _with_revision(claim_name, claim_revision) if said and claim_name else None
    return Provenance("unknown", architecture, None, checkpoint)


def _from_mark(
    model: nn.Module,
    source: BaseSource,
    head_paths: list[str],
    fingerprint: str,
    architecture: str | None,
    name: str | None,
    revision: str | None,
) -> Provenance:
    """Pretrained while the weights keep the fingerprint they were created with."""
    current = fingerprint
    if tuple(sorted(head_paths)) != source.skip:
        current = fingerprint_tensors(list(iter_base_tensors(model, skip=source.skip)))
    if current != source.fingerprint:
        return Provenance(
            "modified", architecture, None, _with_revision(source.name_or_path, source.revision)
        )
    # The user's spelling of the same checkpoint is kept; a name for another one is not.
    if name is None or not source.names_checkpoint(name, None):
        name = source.name_or_path
    name = recorded_name(name)
    if revision is None or revision not in source.revisions:
        revision = source.revision
    return Provenance("pretrained", name, revision)


# ---------------------------------------------------------------------------- local checkpoints
def _find_files(find: Callable[[str], Path | None]) -> list[Path] | None:
    """The weight files of a checkpoint (one file, or every shard of an index)."""
    for filename in _WEIGHT_FILES:
        single = find(filename)
        if single is not None:
            return [single]
        index = find(f"{filename}.index.json")
        if index is not None:
            try:
                shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None
            found = [find(shard) for shard in shards]
            return [p for p in found if p is not None] if all(found) else None
    return None


def checkpoint_files(name: str, revision: str | None) -> list[Path] | None:
    """The weight files of checkpoint ``name`` on this machine, or ``None``; never downloads.

    ``name`` is a weight file, a model folder (``local-dir:`` prefix allowed) or a Hub id (a
    timm ``hf-hub:`` prefix allowed), looked up in the Hugging Face cache at ``revision``.
    """
    path = Path(name.removeprefix(_LOCAL_DIR)).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return _find_files(lambda f: path / f if (path / f).is_file() else None)
    for prefix in TIMM_HUB_PREFIXES:
        name = name.removeprefix(prefix)
    repo_id, pinned = split_revision(name)
    if not _REPO_ID.fullmatch(repo_id):
        return None
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> Path | None:
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=pinned or revision)
        except Exception:  # a malformed cache or revision: nothing to compare with
            return None
        return Path(found) if isinstance(found, str) else None

    return _find_files(cached)


def _read_checkpoint(files: list[Path]) -> dict[str, Callable[[], Tensor]] | None:
    """Tensor name -> loader for every tensor of ``files`` (read lazily; never unpickled)."""
    from safetensors import safe_open

    tensors: dict[str, Callable[[], Tensor]] = {}
    try:
        for file in files:
            if file.suffix == ".safetensors":
                handle = safe_open(str(file), framework="pt", device="cpu")
                for key in handle.keys():  # noqa: SIM118 (safe_open is no mapping)
                    tensors[key] = lambda h=handle, k=key: h.get_tensor(k)
            else:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(state, dict):
                    return None
                for key, value in state.items():
                    if isinstance(value, Tensor):
                        tensors[str(key)] = lambda v=value: v
    except Exception:  # unreadable or not a state dict: nothing to compare with
        return None
    return tensors


def _same_values(stored: Tensor, tensor: Tensor) -> bool:
    """Equal values, in the same dtype or upcast to float32 as the libraries load them."""
    if stored.shape != tensor.shape:
        return False
    if stored.dtype != tensor.dtype and tensor.dtype != torch.float32:
        return False
    return torch.equal(stored.to(tensor.dtype), tensor.detach().to("cpu"))


def _checkpoint_layout(model: nn.Module, state: dict[str, Tensor]) -> list[tuple[str, Tensor]]:
    """``state`` under the names (and in the layout) its library writes to a checkpoint.

    transformers 5 renames some weights on loading and back on saving (ViT's ``encoder.layer``
    became ``layers``); its own reverse conversion, the one ``save_pretrained`` applies, gives
    the checkpoint's names. Other libraries save what the model holds.
    """
    if model_family(model) == "transformers":
        try:
            from transformers.core_model_loading import revert_weight_conversion

            state = revert_weight_conversion(model, state)
        except Exception:  # another transformers release: compare under the model's names
            pass
    return list(state.items())


def _compare_with_files(
    model: nn.Module, head_paths: list[str], name: str, revision: str | None
) -> str | None:
    """``"pretrained"`` when every base tensor equals the checkpoint's, ``"modified"`` when some
    do and others differ, else ``None`` (no files here, or nothing in common)."""
    files = checkpoint_files(name, revision)
    stored = _read_checkpoint(files) if files else None
    if not stored:
        return None
    prefix = getattr(model, "base_model_prefix", None)
    equal = differ = absent = 0
    for key, tensor in _checkpoint_layout(model, dict(iter_base_tensors(model, skip=head_paths))):
        # transformers checkpoints of the bare model lack the task model's prefix, and back.
        spellings = (key, key.removeprefix(f"{prefix}."), f"{prefix}.{key}") if prefix else (key,)
        found = next((k for k in spellings if k in stored), None)
        if found is None:
            absent += 1
        elif _same_values(stored[found](), tensor):
            equal += 1
        else:
            differ += 1
    if equal and not differ and not absent:
        return "pretrained"
    return "modified" if equal and differ else None


# ---------------------------------------------------------------------------- never trained
def looks_untrained(model: nn.Module, head_paths: list[str]) -> bool:
    """Whether every normalisation layer outside the head holds a constant scale and shift.

    Initialisation sets them to constants (1 and 0, or 0 for timm's zero-initialised last norm
    of a block) and any training makes them vary across channels; running statistics are not
    looked at, since a forward pass in train mode changes them without training. A model
    without affine norm layers gives no evidence (``False``).
    """
    found = False
    for path in find_norm_paths(model, skip=head_paths):
        module = model.get_submodule(path)
        for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
            if isinstance(tensor, Tensor) and tensor.numel() > 1:
                found = True
                flat = tensor.detach().reshape(-1)
                if not bool((flat == flat[0]).all()):
                    return False
    return found
