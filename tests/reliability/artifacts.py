"""Valid artifacts made through the public API, and the tools the fuzz uses to break them.

The fuzz never writes artifacts by hand: it saves real adapters with ``save_pretrained`` and
mutates the files. A new encoding or method joins the fuzz by adding a config to ``VARIANTS``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pb_adapters import PackNetConfig, PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.heads import get_label_state
from pb_adapters.methods.packnet import finalize_task, prune_task
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME, ARTIFACT_WEIGHTS_NAME

CONFIG = ARTIFACT_CONFIG_NAME
WEIGHTS = ARTIFACT_WEIGHTS_NAME

#: One adapter per encoding / option the loader must handle.
VARIANTS: dict[str, PiggybackConfig] = {
    "binary": PiggybackConfig(num_labels=3),
    "ternary": PiggybackConfig(num_labels=3, mask_type="ternary"),
    "norms": PiggybackConfig(id2label={0: "a", 1: "b", 2: "c"}, train_norms=True),
}


class MicroNet(nn.Module):
    """A four-layer classifier: conv weights of 108 and 72 entries (padding bits), a hidden
    Linear, a BatchNorm, and an ``fc`` head. Small enough for thousands of loads a second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.hidden = nn.Linear(6, 5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.conv2(x).mean(dim=(2, 3))
        return self.fc(torch.relu(self.hidden(x)))


def micro_base(seed: int = 0) -> MicroNet:
    """A :class:`MicroNet` with deterministic weights and running statistics, in eval mode."""
    torch.manual_seed(seed)
    model = MicroNet()
    model.bn1.running_mean.uniform_(-0.1, 0.1)
    model.bn1.running_var.uniform_(0.5, 1.5)
    return model.eval()


def trained(variant: str, adapter_name: str = "default", seed: int = 1) -> PiggybackModel:
    """A wrapped :func:`micro_base` whose adapter has mixed masks (as after training)."""
    model = get_piggyback_model(micro_base(), VARIANTS[variant], adapter_name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            scores = layer.mask_scores[adapter_name]
            scores.copy_(torch.randn(scores.shape, generator=generator) * 1e-2)
        for param in model.parameter_groups(adapter_name).get("head", []):
            param.add_(torch.randn(param.shape, generator=generator))
    return model.eval()


def packnet(tasks: tuple[str, ...] = ("t1", "t2"), seed: int = 2) -> PiggybackModel:
    """A wrapped :func:`micro_base` holding packed PackNet ``tasks`` (one artifact stores all)."""
    model = PiggybackModel(micro_base())
    generator = torch.Generator().manual_seed(seed)
    for name in tasks:
        model.add_adapter(name, PackNetConfig(num_labels=3, prune_ratio=0.5))
        model.set_adapter(name)
        with torch.no_grad():
            for param in model.parameter_groups(name).get("weights", []):
                param.add_(torch.randn(param.shape, generator=generator))
        prune_task(model, name)
        finalize_task(model, name)
    return model.eval()


def artifact_files(
    model: PiggybackModel, adapter_name: str | None = None, mask_encoding: str = "ans"
) -> dict[str, bytes]:
    """The two artifact files ``save_pretrained`` writes, as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, adapter_name, write_card=False, mask_encoding=mask_encoding)
        return {name: (Path(tmp) / name).read_bytes() for name in (CONFIG, WEIGHTS)}


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Replace ``folder``'s artifact files with ``files`` (a name missing from it is deleted)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, WEIGHTS):
        path = folder / name
        if name in files:
            path.write_bytes(files[name])
        else:
            path.unlink(missing_ok=True)


def rehash(files: dict[str, bytes]) -> dict[str, bytes]:
    """Record the (mutated) weights' hash in the config, so the mutation reaches the parser."""
    try:
        config = json.loads(files[CONFIG])
    except (KeyError, ValueError, RecursionError):
        return files
    if not isinstance(config, dict) or WEIGHTS not in files:
        return files
    config["weights_sha256"] = hashlib.sha256(files[WEIGHTS]).hexdigest()
    return {**files, CONFIG: json.dumps(config).encode()}


def split_safetensors(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """``(header, data)`` of a well-formed safetensors file."""
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def join_safetensors(header: Any, data: bytes, *, size: int | None = None) -> bytes:
    """A safetensors file from a header object and data bytes; ``size`` overrides the length."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if size is None else size) + text + data


def model_state(model: nn.Module) -> dict[str, Any]:
    """Everything a failed load must leave unchanged, compared bit for bit by :func:`same_state`."""
    inner = model.base_model if isinstance(model, PiggybackModel) else model
    state: dict[str, Any] = {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "modules": [(n, type(m).__name__, m.training) for n, m in model.named_modules()],
        "labels": get_label_state(inner),
    }
    if isinstance(model, PiggybackModel):
        state["adapters"] = model.list_adapters()
        state["active"] = model.active_adapter
    return state


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def same_state(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether two :func:`model_state` snapshots are identical, tensors bit for bit."""
    a, b = before["tensors"], after["tensors"]
    if list(a) != list(b):
        return False
    for key in a:
        if a[key].dtype != b[key].dtype or a[key].shape != b[key].shape:
            return False
        if not torch.equal(_bits(a[key]), _bits(b[key])):
            return False
    rest = [k for k in before if k != "tensors"]
    return all(before[k] == after[k] for k in rest)


class TensorAllocations(TorchDispatchMode):
    """Records the tensors torch creates while active (on real devices; ``meta`` is free)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self.largest = max(self.largest, leaf.numel() * leaf.element_size())
        return out


def measure(call: Any) -> tuple[BaseException | None, int, int, float]:
    """Run ``call``; return ``(exception or None, Python-heap peak, largest tensor, seconds)``."""
    allocations = TensorAllocations()
    tracemalloc.start()
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        with allocations:
            call()
    except Exception as err:  # returned to the test, which decides what is acceptable
        error = err
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak, allocations.largest, seconds
