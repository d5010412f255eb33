"""The wrapper as transformers' tools call it: keyword inputs, labels and loss, pipelines."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import ViTImageProcessor, pipeline
from transformers.modeling_outputs import ImageClassifierOutput

from pb_adapters import PbAdaptersError, PiggybackConfig, get_piggyback_model
from tests.factories import tiny_timm, tiny_transformers


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _timm_wrapped(num_labels: int = 3):
    return get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=num_labels))


def test_signature_names_the_inputs_transformers_tools_pass():
    wrapped = _timm_wrapped()
    params = inspect.signature(wrapped.forward).parameters
    assert "pixel_values" in params and "labels" in params
    # transformers.Trainer takes every forward parameter with "label" in its name as a label.
    assert [p for p in params if "label" in p] == ["labels"]


def test_timm_keeps_returning_logits_when_called_as_timm():
    wrapped = _timm_wrapped().eval()
    x = _images()
    logits = wrapped(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (4, 3)
    output = wrapped(pixel_values=x)
    assert isinstance(output, ImageClassifierOutput) and output.loss is None
    assert torch.equal(output.logits, logits)


def test_timm_loss_is_what_transformers_computes():
    wrapped = _timm_wrapped().eval()
    x, y = _images(), torch.tensor([0, 2, 1, 2])
    output = wrapped(pixel_values=x, labels=y)
    assert torch.allclose(output.loss, F.cross_entropy(output.logits, y))
    positional = wrapped(x, labels=y)  # timm style images, labels by keyword
    assert torch.equal(positional.loss, output.loss)
    targets = torch.tensor([[1.0, 0.0, 1.0]] * 4)  # multi-label targets
    multi = wrapped(pixel_values=x, labels=targets)
    assert torch.allclose(multi.loss, F.binary_cross_entropy_with_logits(multi.logits, targets))
    regression = _timm_wrapped(num_labels=1).eval()
    scores = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = regression(pixel_values=x, labels=scores)
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(), scores))


def test_loss_backpropagates_to_masks_and_head():
    wrapped = _timm_wrapped().train()
    wrapped(pixel_values=_images(), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    for group in wrapped.parameter_groups().values():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in group[:3])


def test_transformers_base_computes_its_own_loss_and_positional_calls_still_work():
    base = tiny_transformers("vit")
    wrapped = get_piggyback_model(base, PiggybackConfig(num_labels=3)).eval()
    x, y = _images(), torch.tensor([0, 2, 1, 2])
    output = wrapped(pixel_values=x, labels=y)
    assert torch.allclose(output.loss, F.cross_entropy(output.logits, y))
    assert torch.equal(wrapped(x).logits, output.logits)


def test_mixed_batches_return_outputs_and_refuse_labels():
    wrapped = _timm_wrapped().eval()
    x = _images()
    names = ["default", "__base__", "default", "__base__"]
    mixed = wrapped(pixel_values=x, adapter_names=names)
    assert isinstance(mixed, ImageClassifierOutput)
    assert torch.equal(mixed.logits, wrapped(x, adapter_names=names))
    with pytest.raises(PbAdaptersError, match="no labels"):
        wrapped(pixel_values=x, labels=torch.zeros(4, dtype=torch.long), adapter_names=names)


def test_images_given_twice_refused():
    wrapped = _timm_wrapped().eval()
    with pytest.raises(TypeError, match="not both"):
        wrapped(_images(), pixel_values=_images())


def test_pipeline_runs_without_warning_with_the_active_tasks_labels(transformers_logs):
    wrapped = get_piggyback_model(
        tiny_transformers("vit"), PiggybackConfig(id2label={0: "cat", 1: "dog", 2: "bird"})
    )
    wrapped.add_adapter("digits", PiggybackConfig(id2label={0: "zero", 1: "one"}))
    wrapped.eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    classify = pipeline("image-classification", model=wrapped, image_processor=processor)
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert {r["label"] for r in classify(image)} == {"cat", "dog", "bird"}
    wrapped.set_adapter("digits")
    assert {r["label"] for r in classify(image)} == {"zero", "one"}
    messages = [r.getMessage() for r in transformers_logs.records]
    assert not [m for m in messages if "not supported" in m], messages
