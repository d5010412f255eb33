"""Training step time of every accuracy-benchmark row, and the bytes the baselines store.

A step is forward, loss, backward and an Adam step over what the row trains, on one batch of
random images, timed in alternation across rows (:func:`benchmarks.common.interleaved_medians`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

NUM_LABELS = 10


def _baseline(trainable: str) -> nn.Module:
    from pb_adapters.training.cli_args import create_backbone
    from pb_adapters.training.modeling import head_modules, prepare_baseline_model

    model = prepare_baseline_model(create_backbone(None), NUM_LABELS)
    head = {id(p) for _, m in head_modules(model) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(trainable == "all" or id(p) in head)
    return model


def build_model(variant: Any) -> nn.Module:
    """The model ``variant`` (an :class:`benchmarks.accuracy.Variant`) trains, set to train."""
    if variant.method in ("finetune", "head"):
        model = _baseline("all" if variant.method == "finetune" else "head")
    elif variant.method == "lora":
        from benchmarks import lora
        from pb_adapters.training.modeling import head_modules

        model = _baseline("head")
        model = lora.wrap_lora(model, variant.rank, head_modules(model)[0][0])
    else:
        from pb_adapters import get_piggyback_model
        from pb_adapters.training.cli_args import (
            adapter_config_from_args,
            build_train_parser,
            create_backbone,
            parse_train_args,
        )

        argv = ["--method", variant.method, *variant.argv("mnist-5k")]
        ns = parse_train_args(build_train_parser(), argv)
        config = adapter_config_from_args(ns, {i: str(i) for i in range(NUM_LABELS)})
        model = get_piggyback_model(create_backbone(None), config)
    model.train()
    if variant.method == "lora":
        from benchmarks.lora import set_frozen_norm_mode

        set_frozen_norm_mode(model)
    return model


def _step_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Any:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-6)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_time_ratios(
    variants: list[Any], image_size: int, batch_size: int, repeats: int = 7
) -> dict[str, float]:
    """Median step time of each variant divided by piggyback's (the first row if absent)."""
    from benchmarks.common import interleaved_medians

    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, NUM_LABELS, (batch_size,))
    steps = {v.name: _step_fn(build_model(v), images, labels) for v in variants}
    medians = interleaved_medians(steps, repeats=repeats, warmup=1)
    reference = medians.get("piggyback", next(iter(medians.values())))
    return {name: seconds / reference for name, seconds in medians.items()}


def baseline_bytes(num_labels: int = NUM_LABELS) -> dict[str, int]:
    """Safetensors bytes of a fine-tuned model and of a head alone, and the backbone's weight
    count (parameters outside the head), for bits per weight."""
    from safetensors.torch import save_file

    from pb_adapters.training.modeling import head_modules

    model = _baseline("head")
    head = {f"{n}.{k}": v for n, m in head_modules(model) for k, v in m.state_dict().items()}
    full = {k: v.contiguous() for k, v in model.state_dict().items()}
    head_ids = {id(p) for _, m in head_modules(model) for p in m.parameters()}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for name, tensors in (("finetune", full), ("head", head)):
            path = Path(tmp) / f"{name}.safetensors"
            save_file(tensors, str(path))
            sizes[name] = path.stat().st_size
    sizes["backbone_weights"] = sum(p.numel() for p in model.parameters() if id(p) not in head_ids)
    return sizes
