"""KSMLayer on its own: mask shapes, the relaxation, hardening, quantisation, artifact checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pb_adapters import ArtifactError, ConfigError, KSMConfig
from pb_adapters.methods.ksm.layer import (
    KSMLayer,
    dequantize_scales,
    expand_mask,
    mask_shape,
    quantize_scales,
    relaxed_binary,
)


def _layer(module: nn.Module, **config) -> KSMLayer:
    layer = KSMLayer(module)
    layer.add_adapter("task", KSMConfig(**config))
    layer.set_adapter("task")
    return layer


def _randomise(layer: KSMLayer, seed: int = 0, spread: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        scores = layer.mask_scores["task"]
        scores.add_(spread * torch.randn(scores.shape, generator=generator))


@pytest.mark.parametrize(
    ("module", "entries"),
    [
        (nn.Conv2d(6, 8, 3), (8, 6)),  # one entry per kernel
        (nn.Conv2d(6, 8, 3, groups=2), (8, 3)),  # C_in / groups
        (nn.Conv2d(8, 8, 5, groups=8), (8, 1)),  # depthwise: one entry per channel
        (nn.Conv1d(4, 5, 3), (5, 4)),
        (nn.Conv2d(20, 4, 1), (4, 3)),  # 1x1: blocks of 9 input channels
        (nn.Linear(20, 7), (7, 3)),  # Linear: blocks of 9 inputs, the last one partial
        (nn.Linear(18, 7), (7, 2)),
    ],
)
def test_mask_shapes_and_broadcast_cover_every_weight(module, entries):
    layer = _layer(module)
    assert tuple(layer.mask_scores["task"].shape) == entries
    weight_shape = tuple(module.weight.shape)
    # Give every entry its own value: each weight must be multiplied by its own entry's value.
    values = torch.arange(1, entries[0] * entries[1] + 1, dtype=torch.float32).view(entries)
    expanded = torch.ones(weight_shape) * expand_mask(values, weight_shape, 9)
    assert expanded.shape == weight_shape
    if module.weight[0, 0].numel() > 1:  # a kernel: all its weights share one entry
        assert torch.equal(expanded[2, 0], torch.full_like(expanded[2, 0], values[2, 0].item()))
    else:  # blocks of 9 consecutive inputs of one output
        flat = expanded.reshape(weight_shape[0], -1)
        assert torch.equal(flat[1, :9], torch.full((9,), values[1, 0].item()))
        assert flat[1, 9].item() == values[1, 1].item()
    assert torch.unique(expanded).numel() == values.numel()  # every entry is used


def test_block_size_one_is_per_weight_for_linear():
    layer = _layer(nn.Linear(5, 3), block_size=1)
    assert tuple(layer.mask_scores["task"].shape) == (3, 5)
    assert mask_shape((3, 5), 1) == (3, 5) and mask_shape((3, 5, 3, 3), 1) == (3, 5)


def test_start_state_is_the_base_layer_exactly_in_eval_and_nearly_in_training():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    reference = conv(x)
    layer = _layer(conv).eval()
    assert torch.equal(layer(x), reference)
    layer.train()
    # The relaxed binary part starts at sigmoid(1e-2 / 1e-3) = 0.99995, the real part at 0.
    soft = layer.soft_mask("task")
    torch.testing.assert_close(
        soft, torch.full_like(soft, torch.sigmoid(torch.tensor(10.0)).item())
    )
    torch.testing.assert_close(layer(x), reference, rtol=1e-4, atol=1e-4)


def test_relaxation_is_the_two_state_softmax_of_the_logistic():
    r = torch.linspace(-0.05, 0.05, 101)
    for temperature in (1e-3, 0.1, 1.0):
        p = torch.sigmoid(r.double())  # double: 1 / T amplifies rounding of log p
        states = torch.stack([torch.log(p), torch.log1p(-p)]) / temperature
        expected = torch.softmax(states, dim=0)[0].float()
        torch.testing.assert_close(relaxed_binary(r, temperature), expected)
    # Low temperature approaches the hard step used in eval.
    assert torch.equal((relaxed_binary(r, 1e-6) > 0.5), r > 0)


def test_gradient_reaches_the_real_mask_through_the_relaxation():
    conv = nn.Conv2d(3, 4, 3)
    # Near the switching point, so both parts of the derivative matter.
    layer = _layer(conv, mask_init=1e-3, temperature=1e-3, real_scale=2.0).train()
    x = torch.randn(2, 3, 6, 6)
    layer(x).square().sum().backward()
    grad = layer.mask_scores["task"].grad
    assert grad is not None and grad.abs().min() > 0
    # d mask / d r = sigmoid'(r / T) / T + real_scale, chained with dL/dmask = sum_kernel dL/dW * W.
    soft = layer.soft_mask("task").detach()
    effective = conv.weight * expand_mask(soft, tuple(conv.weight.shape), 9)
    effective = effective.detach().clone().requires_grad_(True)
    layer._forward_with(conv, x, effective).square().sum().backward()
    d_mask = (effective.grad * conv.weight).sum(dim=(2, 3))
    s = torch.sigmoid(torch.tensor(1e-3 / 1e-3))
    torch.testing.assert_close(grad, d_mask * (s * (1 - s) / 1e-3 + 2.0), rtol=1e-4, atol=1e-6)
    assert conv.weight.grad is None  # the base stays frozen


def test_eval_hardens_to_exact_bits_and_quantised_real_part():
    conv = nn.Conv2d(4, 5, 3)
    layer = _layer(conv)
    _randomise(layer)
    layer.eval()
    r = layer.mask_scores["task"].detach()
    binary, codes, scale_range = layer.hard_parts("task")
    assert torch.equal(binary, r > 0)
    real = 10.0 * (r - 1e-2)  # real_scale * (r - mask_init)
    # 8 bits with a per-layer offset and step: error at most half a step.
    assert scale_range[0] == real.min() and codes.dtype == torch.uint8
    error = (dequantize_scales(codes, scale_range) - real).abs().max()
    assert error <= scale_range[1] / 2 + 1e-7
    expected = (
        conv.weight * (binary.float() + dequantize_scales(codes, scale_range))[..., None, None]
    )
    assert torch.equal(layer.merged_weight, expected)
    assert layer.mask_counts("task") == (int((r <= 0).sum()), 20)


def test_quantisation_of_a_constant_is_exact():
    codes, scale_range = quantize_scales(torch.full((3, 4), 0.25))
    assert torch.equal(dequantize_scales(codes, scale_range), torch.full((3, 4), 0.25))
    assert scale_range[1] == 0


def test_export_import_reproduces_the_hard_weight_frozen_and_trainable():
    config = KSMConfig()
    source = _layer(nn.Conv2d(6, 4, 3, groups=2))
    _randomise(source)
    source.eval()
    tensors = source.export_adapter("task")
    assert set(tensors) == {"mask", "scale", "scale_range"}
    KSMLayer.check_import((4, 3, 3, 3), tensors, config)
    for trainable in (False, True):
        target = KSMLayer(source.base_layer)
        target.import_adapter("task", tensors, config, trainable)
        target.set_adapter("task")
        target.eval()
        assert target.is_trainable("task") is trainable
        binary, _, _ = target.hard_parts("task")
        assert torch.equal(binary, source.hard_parts("task")[0])
        if not trainable:  # frozen: bit-identical weight
            assert torch.equal(target.merged_weight, source.merged_weight)
        else:  # resumed from dequantised entries: within one quantisation step
            step = float(tensors["scale_range"][1])
            assert (target.merged_weight - source.merged_weight).abs().max() <= (
                source.base_layer.weight.abs().max() * step * 1.01
            )


def _tensors() -> dict[str, torch.Tensor]:
    layer = _layer(nn.Linear(20, 3))  # 3 x 3 entries: 9 bits, so the last byte has padding
    _randomise(layer)
    return {k: v.clone() for k, v in layer.export_adapter("task").items()}


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda t: t.pop("scale"), "expected tensors"),
        (lambda t: t.update(extra=torch.zeros(1)), "expected tensors"),
        (lambda t: t.update(scale=t["scale"].float()), "tensor 'scale' must be"),
        (lambda t: t.update(scale=t["scale"][:2]), "tensor 'scale' must be"),
        (lambda t: t.update(mask=torch.zeros(3, dtype=torch.uint8)), "tensor 'mask' must be"),
        (lambda t: t["mask"].__setitem__(-1, 0xFF), "padding bits"),
        (lambda t: t["scale_range"].__setitem__(1, -1.0), "step >= 0"),
        (lambda t: t["scale_range"].__setitem__(0, float("nan")), "finite offset"),
        (lambda t: t.update(scale_range=torch.tensor([0.0, 3e36])), "overflows"),
    ],
)
def test_malformed_artifact_tensors_are_refused(corrupt, message):
    tensors = _tensors()
    KSMLayer.check_import((3, 20), tensors, KSMConfig())
    corrupt(tensors)
    with pytest.raises(ArtifactError, match=message):
        KSMLayer.check_import((3, 20), tensors, KSMConfig())


def test_half_precision_cast_keeps_entries_float32():
    layer = _layer(nn.Conv2d(3, 4, 3))
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16
    assert layer.mask_scores["task"].dtype == torch.float32
    layer.train()
    out = layer(torch.randn(1, 3, 5, 5, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.mask_scores["task"].grad.dtype == torch.float32


@pytest.mark.parametrize(
    "bad",
    [
        {"mask_init": 0.0},
        {"mask_init": -1e-2},
        {"temperature": 0.0},
        {"temperature": float("inf")},
        {"real_scale": -1.0},
        {"block_size": 0},
        {"block_size": 2.5},
        {"block_size": True},
        {"mask_lr": -1.0},
    ],
)
def test_config_refuses_bad_values(bad):
    with pytest.raises(ConfigError):
        KSMConfig(**bad)


def test_config_round_trips_through_json():
    config = KSMConfig(temperature=0.01, real_scale=2.0, block_size=4, num_labels=3)
    assert KSMConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["method"] == "ksm"
