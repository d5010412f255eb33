"""Create a base model from a name, as timm and transformers users name them.

Used when :meth:`pb_adapters.PiggybackModel.from_pretrained` is given the base as a string: a
timm registry name (``"resnet50.a1_in1k"``), a timm Hub name (``"hf-hub:timm/resnet50.a1_in1k"``),
or a transformers model id or local folder (``"google/vit-base-patch16-224"``). Downloads go
through each library's own Hub code, so caches, tokens and ``HF_HUB_OFFLINE`` behave as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .errors import PbAdaptersError

__all__ = ["load_base_model"]


def _is_transformers_folder(name: str) -> bool:
    path = Path(name)
    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and not (path / "pretrained_cfg.json").is_file()
    )


def load_base_model(
    name_or_path: str,
    *,
    revision: str | None = None,
    library: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Create the pretrained base model called ``name_or_path``, in eval mode.

    Args:
        name_or_path: A timm name (``hf-hub:`` id or registry name) or a transformers id/folder.
        revision: The Hub revision to create it at (timm: appended as ``@revision``).
        library: ``"timm"`` or ``"transformers"`` when known (from the artifact); guessed when
            ``None``: ``hf-hub:`` ids and timm registry names are timm, the rest transformers.
        token: Hub token for private or gated base models.
        cache_dir: Hub cache folder.

    Raises:
        PbAdaptersError: the name is neither a timm model nor a transformers model, or creating
            it failed (the message says which library was used and why).
    """
    import timm

    is_timm = library == "timm" or (
        library is None
        and (
            name_or_path.startswith("hf-hub:")
            or (not _is_transformers_folder(name_or_path) and timm.is_model(name_or_path))
        )
    )
    try:
        if is_timm:
            name = name_or_path
            if revision and name.startswith("hf-hub:") and "@" not in name:
                name = f"{name}@{revision}"
            kwargs = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
            model = timm.create_model(name, pretrained=True, **kwargs)
        else:
            from transformers import AutoModelForImageClassification

            model = AutoModelForImageClassification.from_pretrained(
                name_or_path,
                revision=revision,
                token=token,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
    except PbAdaptersError:
        raise
    except Exception as err:
        which = "timm" if is_timm else "transformers"
        raise PbAdaptersError(
            f"could not create the base model {name_or_path!r} with {which}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Pass the base as a model object instead, "
            "or check the name, revision and your network / HF_HUB_OFFLINE setting."
        ) from err
    return model.eval()
