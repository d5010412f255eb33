"""Every timm and transformers vision family: its real classifier head (or a clear error), outputs
exactly the base's at init, only masks and head train, and save/load and merge are exact.

Each case is a tiny random-init model built from its config (no download). Classification models
keep their classes (``num_labels=None``: a trainable copy of the base head, exact at init) and
also get a new 3-class task (a fresh head at the real classifier). transformers models without a
classifier (``ViTModel``, ``CLIPVisionModel``, ``SiglipVisionModel``...) are feature extractors:
they take masks-only adapters, and ``num_labels`` is refused with an error that names the
``*ForImageClassification`` class to use. A timm model built with ``num_classes=0`` gets a head
created from ``num_labels``. docs/families.md lists the same cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from pb_adapters import PiggybackConfig, PiggybackModel, TargetingError, get_piggyback_model
from pb_adapters.methods.base import AdapterLayer
from pb_adapters.targeting import find_head_paths, model_family
from tests.factories import randomize_norm_statistics, tiny_from_config, tiny_timm

NUM_LABELS = 3


@dataclass(frozen=True)
class Family:
    """One family: how to build a tiny model, where its head is, its input size."""

    id: str
    build: Callable[[], nn.Module]
    heads: tuple[str, ...]  # () for a model without a classifier
    size: int = 32


_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
)
_STAGES = dict(hidden_sizes=[8, 16], depths=[1, 1])


def _hf(model_class: str, config_class: str, **config) -> Callable[[], nn.Module]:
    return lambda: tiny_from_config(model_class, config_class, num_labels=5, **config)


def _timm(name: str, num_classes: int = 5, **kwargs) -> Callable[[], nn.Module]:
    return lambda: tiny_timm(name, num_classes=num_classes, **kwargs)


def _timm_vit(name: str, **kwargs) -> Callable[[], nn.Module]:
    tiny = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    return _timm(name, **(tiny | kwargs))


def _narrow_vgg16() -> nn.Module:
    """timm's ``vgg16`` (its class and pretrained_cfg, the 16-layer plan) at 1/32 of the width:
    ``create_model("vgg16")`` has 138M parameters whatever the keyword arguments."""
    from timm.models import build_model_with_cfg
    from timm.models.vgg import VGG, cfgs

    torch.manual_seed(0)
    plan = [v if v == "M" else v // 32 for v in cfgs["vgg16"]]
    model = build_model_with_cfg(
        VGG, "vgg16", pretrained=False, model_cfg=plan, num_classes=5, mlp_ratio=1 / 512
    )
    return randomize_norm_statistics(model).eval()


TRANSFORMERS = [
    Family("ViT", _hf("ViTForImageClassification", "ViTConfig", **_VIT), ("classifier",)),
    Family("ViTModel", _hf("ViTModel", "ViTConfig", **_VIT), ()),
    Family("DeiT", _hf("DeiTForImageClassification", "DeiTConfig", **_VIT), ("classifier",)),
    Family(
        "DeiT-teacher",
        _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", **_VIT),
        ("cls_classifier", "distillation_classifier"),
    ),
    Family(
        "Swin",
        _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=32,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=4,
        ),
        ("classifier",),
    ),
    Family(
        "ConvNeXt",
        _hf("ConvNextForImageClassification", "ConvNextConfig", num_stages=2, **_STAGES),
        ("classifier",),
    ),
    Family(
        "ConvNeXtV2",
        _hf("ConvNextV2ForImageClassification", "ConvNextV2Config", num_stages=2, **_STAGES),
        ("classifier",),
    ),
    Family(
        "ResNet",
        _hf("ResNetForImageClassification", "ResNetConfig", embedding_size=8, **_STAGES),
        ("classifier.1",),
    ),
    Family("DINOv2", _hf("Dinov2ForImageClassification", "Dinov2Config", **_VIT), ("classifier",)),
    Family("Dinov2Model", _hf("Dinov2Model", "Dinov2Config", **_VIT), ()),
    Family(
        "CLIP",
        _hf("CLIPForImageClassification", "CLIPConfig", vision_config=_VIT),
        ("classifier",),
    ),
    Family("CLIPVisionModel", _hf("CLIPVisionModel", "CLIPVisionConfig", **_VIT), ()),
    Family(
        "SigLIP",
        _hf("SiglipForImageClassification", "SiglipConfig", vision_config=_VIT),
        ("classifier",),
    ),
    Family("SiglipVisionModel", _hf("SiglipVisionModel", "SiglipVisionConfig", **_VIT), ()),
    Family("BEiT", _hf("BeitForImageClassification", "BeitConfig", **_VIT), ("classifier",)),
    Family(
        "MobileViT",
        _hf(
            "MobileViTForImageClassification",
            "MobileViTConfig",
            image_size=32,
            patch_size=2,
            hidden_sizes=[16, 16, 16],
            neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16],
            num_attention_heads=1,
            initializer_range=0.2,  # at 0.02 the signal of 30 layers vanishes below Adam's eps
        ),
        ("classifier",),
    ),
    Family(
        "EfficientNet",
        _hf(
            "EfficientNetForImageClassification",
            "EfficientNetConfig",
            image_size=32,
            width_coefficient=0.1,
            depth_coefficient=0.1,
            hidden_dim=128,
        ),
        ("classifier",),
    ),
    Family(
        "RegNet",
        _hf(
            "RegNetForImageClassification",
            "RegNetConfig",
            embedding_size=8,
            groups_width=8,
            **_STAGES,
        ),
        ("classifier.1",),
    ),
    Family(
        "HGNetV2",  # its `classifier` only pools: the head is the num_labels-wide `fc`
        _hf(
            "HGNetV2ForImageClassification",
            "HGNetV2Config",
            stem_channels=[3, 8, 8],
            stage_in_channels=[8, 16],
            stage_mid_channels=[8, 8],
            stage_out_channels=[16, 16],
            stage_num_blocks=[1, 1],
            stage_downsample=[False, True],
            stage_light_block=[False, False],
            stage_kernel_size=[3, 3],
            stage_numb_of_layers=[1, 1],
            hidden_sizes=[16, 16],
            depths=[1, 1],
        ),
        ("fc",),
    ),
    Family(
        "SwiftFormer",
        _hf(
            "SwiftFormerForImageClassification",
            "SwiftFormerConfig",
            depths=[1, 1, 1, 1],
            embed_dims=[8, 8, 16, 16],
        ),
        ("head", "dist_head"),
    ),
    Family(
        "TimmWrapper",  # a timm model inside transformers (AutoModel on a timm Hub repo)
        _hf(
            "TimmWrapperForImageClassification",
            "TimmWrapperConfig",
            architecture="resnet18",
            model_args=dict(layers=(1, 1, 1, 1), channels=(8, 16, 16, 16), stem_width=8),
        ),
        ("timm_model.fc",),
    ),
    Family(
        "Segformer",
        _hf(
            "SegformerForImageClassification",
            "SegformerConfig",
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[8, 16],
            patch_sizes=[7, 3],
            strides=[4, 2],
            num_attention_heads=[1, 1],
            mlp_ratios=[2, 2],
        ),
        ("classifier",),
    ),
]

TIMM = [
    Family(
        "resnet18",
        _timm("resnet18", layers=(1, 1, 1, 1), channels=(8, 16, 16, 16), stem_width=8),
        ("fc",),
    ),
    Family(
        "resnet18 num_classes=0",
        _timm("resnet18", num_classes=0, layers=(1, 1, 1, 1), channels=(8, 16, 16, 16)),
        ("fc",),
    ),
    Family("efficientnet", _timm("test_efficientnet"), ("classifier",)),
    Family("vit", _timm_vit("vit_tiny_patch16_224"), ("head",)),
    Family(
        "convnext",
        _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 16, 16)),
        ("head.fc",),
    ),
    Family(
        "swin",
        _timm(
            "swin_tiny_patch4_window7_224",
            img_size=32,
            window_size=4,
            embed_dim=8,
            depths=(1, 1),
            num_heads=(1, 2),
        ),
        ("head.fc",),
    ),
    Family("deit distilled", _timm_vit("deit_tiny_distilled_patch16_224"), ("head", "head_dist")),
    Family(
        "regnet",
        _timm("regnetx_002", depth=4, w0=8, wa=16.0, wm=1.5, group_size=8, stem_width=8),
        ("head.fc",),
    ),
    Family("mobilenetv3", _timm("mobilenetv3_small_050"), ("classifier",)),
    Family(
        "densenet121",
        _timm("densenet121", growth_rate=4, block_config=(1, 1, 1, 1)),
        ("classifier",),
    ),
    Family("vgg16", _narrow_vgg16, ("head.fc",)),
    Family("eva", _timm_vit("eva02_tiny_patch14_224", img_size=28, patch_size=14), ("head",), 28),
    Family("beit", _timm_vit("beit_base_patch16_224"), ("head",)),
]


def _tensors(output) -> tuple[Tensor, ...]:
    """The tensors a forward returns: timm logits; transformers logits or hidden states."""
    if isinstance(output, Tensor):
        return (output,)
    if getattr(output, "logits", None) is not None:
        return (output.logits,)
    return tuple(v for v in output.values() if isinstance(v, Tensor))


def _forward(model: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    base = model.base_model if isinstance(model, PiggybackModel) else model
    with torch.no_grad():
        return _tensors(model(pixel_values=x) if model_family(base) == "transformers" else model(x))


def _assert_equal(actual: tuple[Tensor, ...], expected: tuple[Tensor, ...]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and torch.equal(a, e)


def _one_step(wrapped: PiggybackModel, x: Tensor, classifies: bool) -> None:
    """One Adam step on the active task (its loss is cross-entropy, or a feature norm)."""
    params = [p for group in wrapped.parameter_groups().values() for p in group]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    wrapped.train()
    base = wrapped.base_model
    output = wrapped(pixel_values=x) if model_family(base) == "transformers" else wrapped(x)
    if classifies:
        target = torch.arange(x.shape[0]) % NUM_LABELS
        loss = nn.functional.cross_entropy(_tensors(output)[0], target)
    else:
        loss = sum(t.float().pow(2).mean() for t in _tensors(output))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    wrapped.eval()


@pytest.mark.parametrize("family", TRANSFORMERS + TIMM, ids=lambda f: f.id)
def test_family_head_exactness_training_save_load_and_merge(family: Family, tmp_path):
    base = family.build()
    assert tuple(find_head_paths(base)) == family.heads
    x = torch.randn(2, 3, family.size, family.size)
    reference = _forward(base, x)
    snapshot = [(t, t.detach().clone()) for t in (*base.parameters(), *base.buffers())]

    # Exact at init: the base's own classes through a copy of its head (or no head at all).
    wrapped = get_piggyback_model(base, PiggybackConfig(), "same")
    _assert_equal(_forward(wrapped, x), reference)

    classifies = bool(family.heads)
    if classifies:  # a new task gets a fresh head of its size at the real classifier
        wrapped.add_adapter("task", PiggybackConfig(num_labels=NUM_LABELS))
        wrapped.set_adapter("task")
        assert _forward(wrapped, x)[0].shape == (2, NUM_LABELS)
    else:  # no classifier: refused, naming the class that has one, and nothing changes
        with pytest.raises(TargetingError, match="ForImageClassification"):
            wrapped.add_adapter("task", PiggybackConfig(num_labels=NUM_LABELS))
        assert list(wrapped.peft_config) == ["same"]
        wrapped.add_adapter("task", PiggybackConfig())
        wrapped.set_adapter("task")
        _assert_equal(_forward(wrapped, x), reference)

    # Only the task's masks and head train, and a step leaves every base tensor bit-identical.
    layers = [layer for _, layer in wrapped.adapter_layers()]
    assert layers and all(isinstance(layer, AdapterLayer) for layer in layers)
    masks = {id(layer.mask_scores["task"]) for layer in layers}
    head = {id(p) for p in wrapped.task_modules["task"].parameters()}
    assert bool(head) == classifies
    trainable = {id(p) for p in wrapped.parameters() if p.requires_grad}
    assert trainable == masks | head
    head_before = [p.detach().clone() for p in wrapped.task_modules["task"].parameters()]
    _one_step(wrapped, x, classifies)
    assert all(torch.equal(t, before) for t, before in snapshot)
    assert wrapped.mask_stats("task").zeros > 0
    head_after = list(wrapped.task_modules["task"].parameters())
    assert all(not torch.equal(a, b) for a, b in zip(head_after, head_before, strict=True))
    trained = _forward(wrapped, x)

    # Exact save/load onto a fresh copy of the base.
    wrapped.save_pretrained(tmp_path, "task")
    reloaded = PiggybackModel.from_pretrained(family.build(), tmp_path)
    _assert_equal(_forward(reloaded, x), trained)

    # Exact merge: a plain model of the base's class computes what the adapter computes.
    merged = wrapped.merge_and_unload("task").eval()
    assert type(merged) is type(base)
    assert not any(isinstance(m, AdapterLayer) for m in merged.modules())
    _assert_equal(_forward(merged, x), trained)
    wrapped.set_adapter("same")
    _assert_equal(_forward(wrapped, x), reference)
