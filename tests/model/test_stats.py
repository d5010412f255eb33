"""print_trainable_parameters: the trainable share, and the bytes the task really stores."""

from __future__ import annotations

import re

import torch
from safetensors.torch import load_file

from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.serialization import ARTIFACT_WEIGHTS_NAME
from tests.factories import tiny_timm, train_steps


def _stored_bytes(folder) -> int:
    return sum(
        t.numel() * t.element_size() for t in load_file(folder / ARTIFACT_WEIGHTS_NAME).values()
    )


def test_printed_task_bytes_are_the_saved_tensor_bytes(tmp_path, capsys):
    wrapped = get_piggyback_model(tiny_timm(), PiggybackConfig(num_labels=3))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    train_steps(wrapped, x, torch.tensor([0, 1, 2, 0]), steps=3, lr=0.05)
    wrapped.print_trainable_parameters()
    printed = capsys.readouterr().out
    match = re.search(
        r"task stores: ([\d,]+) bytes \(masks ([\d,]+) \+ head and task modules ([\d,]+)\) "
        r"\|\| at most ([\d,]+) bytes with masks bit-packed",
        printed,
    )
    assert match, printed
    total, masks, modules, bound = (int(g.replace(",", "")) for g in match.groups())
    assert total == masks + modules <= bound
    head = wrapped.task_modules["default"]
    assert modules == sum(p.numel() * p.element_size() for p in head.parameters())
    assert bound - modules == sum(
        (layer.base_layer.weight.numel() + 7) // 8 for _, layer in wrapped.adapter_layers()
    )
    assert _stored_bytes(wrapped.save_pretrained(tmp_path, write_card=False)) == total
