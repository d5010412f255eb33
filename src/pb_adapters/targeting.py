"""Which modules get masks: model families, classifier heads, norm layers and target matching.

The default rule is the official piggyback code's: every convolution (stem and downsample
convolutions included) and every hidden ``Linear`` of the backbone, never the classifier head,
never norm layers or biases. It holds for every timm and transformers vision family because it is
stated in terms of layer types, with the head found from the model's own metadata: timm's
``pretrained_cfg["classifier"]`` and the ``classifier`` of transformers' ``*ForImageClassification``
models (transformers models without one, such as ``SiglipVisionModel``, have no head).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Literal

from torch import Tensor, nn

from .errors import TargetingError
from .methods.base import SUPPORTED_LAYER_TYPES, AdapterLayer, is_supported_layer

__all__ = [
    "ModelFamily",
    "find_head_paths",
    "find_norm_paths",
    "injectable_paths",
    "is_image_classifier",
    "is_norm_layer",
    "is_transformers_model",
    "iter_base_tensors",
    "match_module_names",
    "model_family",
    "resolve_target_modules",
    "unmatched_names",
]

ModelFamily = Literal["timm", "transformers", "torch"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def is_transformers_model(model: object) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (unwrap DDP and the like first)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def model_family(model: nn.Module) -> ModelFamily:
    """``"transformers"`` for a ``PreTrainedModel``, ``"timm"`` for a model with a timm
    ``pretrained_cfg``, else ``"torch"``."""
    if is_transformers_model(model):
        return "transformers"
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        return "timm"
    return "torch"


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (kept frozen, and in eval mode, by default).

    Besides torch's norm classes this recognises the custom ones of timm and transformers
    (``LayerNorm2d``, ``ConvNextLayerNorm``, ``RMSNorm``...) by name, as they do not all derive
    from torch's classes.
    """
    if isinstance(module, _NORM_TYPES):
        return True
    name = type(module).__name__
    return name.endswith(("Norm", "Norm2d", "Norm1d", "NormAct2d")) and any(
        p is not None for p in module._parameters.values()
    )


def iter_base_tensors(module: nn.Module, skip: Iterable[str] = ()) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` for the base weights of a plain or wrapped model.

    Wrapped layers report their ``base_layer``'s tensors under the original names, so a wrapped
    model and the plain model it came from yield the same items. Modules whose path is in
    ``skip`` (the classifier head, which every task replaces) are left out, as are
    ``num_batches_tracked`` counters (they never change outputs).
    """
    skipped = set(skip)
    seen: set[int] = set()

    def visit(current: nn.Module, path: str) -> Iterator[tuple[str, Tensor]]:
        if path in skipped:
            return
        if isinstance(current, AdapterLayer):
            current = current.base_layer
        prefix = f"{path}." if path else ""
        for name, param in current._parameters.items():
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                yield prefix + name, param
        for name, buf in current._buffers.items():
            if (
                buf is None
                or name == "num_batches_tracked"
                or name in current._non_persistent_buffers_set
            ):
                continue
            yield prefix + name, buf
        for name, child in current._modules.items():
            if child is not None:
                yield from visit(child, prefix + name)

    yield from visit(module, "")


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _last_classifier_layer(model: nn.Module, path: str) -> str | None:
    """A head given as a container (transformers ResNet: ``Sequential(Flatten, Linear)``) is
    represented by its last Linear/Conv layer, the one that maps features to classes; ``None``
    when the container holds no such layer (HGNetV2's ``classifier`` only pools)."""
    module = _get(model, path)
    if module is None or isinstance(module, nn.Linear | nn.Conv2d | nn.Identity):
        return path
    last = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear | nn.Conv2d):
            last = name
    return f"{path}.{last}" if last else None


def _out_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return None


def is_image_classifier(model: nn.Module) -> bool:
    """Whether a transformers model is an image classification model (its forward returns
    logits): ``*ForImageClassification`` and ``*ForImageClassificationWithTeacher``."""
    return "ForImageClassification" in type(model).__name__


def _transformers_heads(model: nn.Module) -> list[str]:
    """The classifier layers of a transformers ``*ForImageClassification`` model.

    Every top-level child named ``*classifier`` that holds a Linear/Conv layer (DeiT with teacher:
    ``cls_classifier`` and ``distillation_classifier``); failing that, the top-level children whose
    last layer has ``config.num_labels`` outputs (HGNetV2's ``fc``, SwiftFormer's ``head`` and
    ``dist_head``); a wrapped timm model (``TimmWrapperForImageClassification``) has the heads its
    ``pretrained_cfg`` names.
    """
    for name, child in model.named_children():
        if model_family(child) == "timm":
            return [f"{name}.{path}" for path in find_head_paths(child)]
    named = [
        path
        for name, _ in model.named_children()
        if name.endswith("classifier") and (path := _last_classifier_layer(model, name))
    ]
    if named:
        return named
    num_labels = getattr(model.config, "num_labels", None)
    found = []
    for name, _ in model.named_children():
        path = _last_classifier_layer(model, name)
        if path is not None and _out_width(model.get_submodule(path)) == num_labels:
            found.append(path)
    return found


def find_head_paths(model: nn.Module) -> list[str]:
    """Paths of the classifier layer(s) that each task replaces with its own head.

    timm: ``pretrained_cfg["classifier"]`` (a name or a tuple of names, e.g. DeiT's head and
    distillation head). transformers ``*ForImageClassification``: every ``*classifier`` child (see
    :func:`is_image_classifier`); other transformers models (``ViTModel``, ``CLIPVisionModel``,
    ``SiglipVisionModel``...) have no classifier head: their ``pooler`` or attention-pooling
    ``head`` belongs to the backbone. Other torch models: a top-level ``classifier``/``head``/``fc``.
    """
    family = model_family(model)
    if family == "transformers":
        return _transformers_heads(model) if is_image_classifier(model) else []
    candidates: list[str] = []
    if family == "timm":
        entry = model.pretrained_cfg.get("classifier")
        candidates = [entry] if isinstance(entry, str) else list(entry or [])
    if not candidates:
        candidates = [
            name for name in ("classifier", "head", "fc") if _get(model, name) is not None
        ][:1]
    # A named head without a Linear/Conv stays as named: creating a task head then says why not.
    return [_last_classifier_layer(model, p) or p for p in candidates if _get(model, p) is not None]


def find_norm_paths(model: nn.Module, skip: Iterable[str] = ()) -> list[str]:
    """Paths of every norm layer of ``model``, outside the subtrees named in ``skip``."""
    skipped = tuple(skip)
    return [
        name
        for name, module in model.named_modules()
        if name
        and is_norm_layer(module)
        and not any(name == s or name.startswith(s + ".") for s in skipped)
    ]


def _suffixes(name: str) -> Iterator[str]:
    """``name`` and each of its dotted suffixes: ``a.b.c``, ``b.c``, ``c``."""
    yield name
    start = name.find(".")
    while start != -1:
        yield name[start + 1 :]
        start = name.find(".", start + 1)


def match_module_names(names: Iterable[str], pattern: list[str] | str) -> list[str]:
    """Names matching ``pattern``: a regex (full match) or a list of exact names / dotted suffixes."""
    if isinstance(pattern, str):
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise TargetingError(f"invalid regular expression {pattern!r}: {err}") from None
        return [n for n in names if regex.fullmatch(n)]
    # A set lookup per suffix: linear in the number of names, whatever the length of the list.
    wanted = set(pattern)
    return [n for n in names if any(s in wanted for s in _suffixes(n))]


def unmatched_names(names: Iterable[str], pattern: list[str]) -> list[str]:
    """The entries of the name list ``pattern`` that match none of ``names``."""
    found: set[str] = set()
    for name in names:
        found.update(_suffixes(name))
    return [p for p in pattern if p not in found]


def _inside(name: str, roots: Iterable[str]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def resolve_target_modules(
    model: nn.Module,
    target_modules: list[str] | str | None = None,
    exclude_modules: list[str] | str | None = None,
) -> list[str]:
    """The names of the modules to mask, in model order.

    Args:
        model: A plain or already wrapped timm / transformers / torch model.
        target_modules: ``None`` for the default rule (every supported layer outside the head);
            otherwise names, dotted suffixes or a regex, see :class:`~pb_adapters.AdapterConfig`.
        exclude_modules: Modules to leave out, matched the same way.

    Raises:
        TargetingError: a requested module is of an unsupported type or is the classifier head,
            or nothing at all would be masked.
    """
    heads = find_head_paths(model)
    modules: dict[str, nn.Module] = {}
    wrapped: str | None = None
    for name, module in model.named_modules():  # depth first: a layer's children follow it
        if not name or (wrapped is not None and name.startswith(wrapped + ".")):
            continue  # the inside of a wrapped layer is not a separate target
        if isinstance(module, AdapterLayer):
            wrapped = name
        modules[name] = module

    if target_modules is None:
        selected = [
            n for n, m in modules.items() if is_supported_layer(m) or isinstance(m, AdapterLayer)
        ]
        selected = [n for n in selected if not _inside(n, heads)]
    else:
        selected = match_module_names(modules, target_modules)
        if not selected:
            sample = [n for n, m in modules.items() if is_supported_layer(m)][:8]
            raise TargetingError(
                f"target_modules={target_modules!r} matches no module of {type(model).__name__}; "
                f"maskable modules look like: {sample}"
            )
        for name in selected:
            module = modules[name]
            if _inside(name, heads):
                raise TargetingError(
                    f"{name!r} is the classifier head; heads are not masked, each task trains its own "
                    "(set num_labels, or train_head)"
                )
            if not (is_supported_layer(module) or isinstance(module, AdapterLayer)):
                supported = ", ".join(t.__name__ for t in SUPPORTED_LAYER_TYPES)
                raise TargetingError(
                    f"cannot mask module {name!r} of type {type(module).__name__}; supported types are "
                    f"{supported} and their subclasses"
                )
    if exclude_modules is not None:
        excluded = set(match_module_names(modules, exclude_modules))
        selected = [n for n in selected if not _inside(n, excluded)]
    if not selected:
        raise TargetingError(
            f"no module of {type(model).__name__} would be masked; check target_modules"
        )
    return selected


def injectable_paths(model: nn.Module) -> list[str]:
    """Every module path a mask may be put on: the supported layers outside the classifier head.

    A layer already wrapped counts under its own path; the inside of a wrapper (its
    ``base_layer``) is not a separate layer. Paths an artifact names are checked against this set.
    """
    try:
        return resolve_target_modules(model)
    except TargetingError:  # nothing to mask at all
        return []
