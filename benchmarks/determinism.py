"""What ``--deterministic`` costs: a training step with and without deterministic algorithms.

The same piggyback model (the offline ImageNet EfficientNet-Lite0) and batch take training steps
(forward, cross-entropy, backward, Adam) in alternation inside and outside
:func:`pb_adapters.training.determinism.deterministic`; the ratio of the medians is the cost. A
third variant runs deterministically without torch filling every new tensor
(``torch.utils.deterministic.fill_uninitialized_memory``), to show what that filling costs.

python -m benchmarks.determinism [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_medians, write_result


def _step(device: str, image_size: int, batch: int) -> Callable[[], None]:
    """One training step of the demo backbone's piggyback model on a fixed batch."""
    from pb_adapters import PiggybackConfig, get_piggyback_model
    from pb_adapters.training.demo import load_demo_backbone

    torch.manual_seed(0)
    model = get_piggyback_model(load_demo_backbone(), PiggybackConfig(num_labels=10)).to(device)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)

    def step() -> None:
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _inside(step: Callable[[], None], fill: bool = True) -> Callable[[], None]:
    """``step`` under deterministic algorithms; ``fill=False`` turns off torch's filling of
    new tensors (``torch.utils.deterministic.fill_uninitialized_memory``) within it."""
    from pb_adapters.training.determinism import deterministic

    def deterministic_step() -> None:
        with deterministic():
            previous = torch.utils.deterministic.fill_uninitialized_memory
            torch.utils.deterministic.fill_uninitialized_memory = fill
            try:
                step()
            finally:
                torch.utils.deterministic.fill_uninitialized_memory = previous

    return deterministic_step


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Measure and write ``determinism-<device>.json``."""
    image_size, batch = (64, 32) if device == "cpu" else (224, 64)
    step = _step(device, image_size, batch)
    repeats = 5 if quick else 15
    candidates = {
        "default": step,
        "deterministic": _inside(step),
        "deterministic_without_fill": _inside(step, fill=False),
    }
    times = interleaved_medians(candidates, repeats)
    result = {
        "image_size": image_size,
        "batch": batch,
        "repeats": repeats,
        "step_seconds": times,
        "deterministic_over_default": times["deterministic"] / times["default"],
        "without_fill_over_default": times["deterministic_without_fill"] / times["default"],
    }
    write_result(f"determinism-{device}", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    result = run(args.quick, args.device)
    print(f"deterministic ÷ default: {result['deterministic_over_default']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
