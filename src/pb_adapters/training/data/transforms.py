"""Transforms from the model's own data configuration (timm ``pretrained_cfg`` or an image processor)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from pb_adapters.targeting import model_family
from pb_adapters.training.modeling import inner_model

logger = logging.getLogger(__name__)

__all__ = ["DataConfig", "build_transforms", "resolve_data_config"]


@dataclass
class DataConfig:
    """Pre-processing a model expects: input size, normalisation, resize interpolation, crop."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    source: str = "default"


def _processor_config(processor: Any, model: torch.nn.Module) -> DataConfig:
    """Read size/mean/std/crop from a transformers image processor."""
    mean = tuple(getattr(processor, "image_mean", None) or (0.485, 0.456, 0.406))
    std = tuple(getattr(processor, "image_std", None) or (0.229, 0.224, 0.225))
    size = getattr(processor, "size", None)
    crop = (
        getattr(processor, "crop_size", None)
        if getattr(processor, "do_center_crop", False)
        else None
    )

    def edge(s: Any) -> int | None:
        if s is None:
            return None
        if isinstance(s, int):
            return s
        s = dict(s)
        for key in ("shortest_edge", "height", "width", "longest_edge"):
            if s.get(key):
                return int(s[key])
        return None

    crop_edge, size_edge = edge(crop), edge(size)
    image_size = (
        crop_edge or size_edge or getattr(getattr(model, "config", None), "image_size", 224)
    )
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct is None:
        crop_pct = (
            crop_edge / size_edge if crop_edge and size_edge and size_edge >= crop_edge else 1.0
        )
    resample = getattr(processor, "resample", None)
    interp = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(
        int(resample) if resample is not None else 2, "bilinear"
    )
    return DataConfig(int(image_size), mean, std, interp, float(crop_pct), source="image_processor")  # type: ignore[arg-type]


def resolve_data_config(model: torch.nn.Module, image_processor: Any = None) -> DataConfig:
    """Find the pre-processing ``model`` was trained with.

    timm models: ``timm.data.resolve_data_config`` on the model's ``pretrained_cfg``.
    transformers models: ``image_processor`` when given, else ``AutoImageProcessor`` from the
    model's ``name_or_path`` (local files only when ``HF_HUB_OFFLINE`` is set), else the config's
    ``image_size`` with ImageNet statistics (a warning says so).
    """
    inner = inner_model(model)
    if image_processor is not None:
        return _processor_config(image_processor, inner)
    if model_family(inner) == "transformers":
        name = getattr(inner, "name_or_path", "") or getattr(inner.config, "_name_or_path", "")
        if name:
            try:
                from transformers import AutoImageProcessor

                offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
                proc = AutoImageProcessor.from_pretrained(name, local_files_only=offline)
                return _processor_config(proc, inner)
            except Exception as exc:
                logger.info("no image processor for %s (%s); using defaults", name, exc)
        size = int(getattr(inner.config, "image_size", 224) or 224)
        warnings.warn(
            "no image processor found for this transformers model; using ImageNet mean/std at "
            f"{size}px (pass image_processor= to use the model's own pre-processing)",
            stacklevel=2,
        )
        return DataConfig(image_size=size, crop_pct=1.0, source="transformers-default")
    from timm.data import resolve_data_config as timm_resolve

    cfg = timm_resolve({}, model=inner)
    return DataConfig(
        image_size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(cfg["std"]),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        source="timm",
    )


def build_transforms(
    model: torch.nn.Module | None = None,
    *,
    data_config: DataConfig | None = None,
    image_size: int | None = None,
    hflip: bool = True,
    train_scale: tuple[float, float] = (0.08, 1.0),
    crop_pct: float | None = None,
    image_processor: Any = None,
) -> tuple[Callable[[Image.Image], torch.Tensor], Callable[[Image.Image], torch.Tensor]]:
    """Training and evaluation transforms for ``model``.

    Training: random resized crop (area fraction ``train_scale``) to ``image_size``, horizontal
    flip with probability 0.5 when ``hflip`` (turn it off for data such as digits or text), tensor,
    normalise. Evaluation: resize to ``image_size / crop_pct``, center crop, tensor, normalise.
    Sizes and statistics come from ``data_config`` or :func:`resolve_data_config`; ``image_size``
    and ``crop_pct`` override them.
    """
    from timm.data import create_transform

    if data_config is None:
        data_config = (
            resolve_data_config(model, image_processor) if model is not None else DataConfig()
        )
    size = int(image_size or data_config.image_size)
    pct = float(crop_pct if crop_pct is not None else data_config.crop_pct)
    common = {
        "interpolation": data_config.interpolation,
        "mean": tuple(data_config.mean),
        "std": tuple(data_config.std),
    }
    train_tf = create_transform(
        size,
        is_training=True,
        scale=tuple(train_scale),
        hflip=0.5 if hflip else 0.0,
        color_jitter=None,
        **common,
    )
    eval_tf = create_transform(size, is_training=False, crop_pct=pct, **common)
    return train_tf, eval_tf
