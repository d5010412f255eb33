"""Training step time of each adapter method on the demo backbone, measured side by side.

python -m benchmarks.methods            # 15 interleaved repeats of each method's training step
python -m benchmarks.methods --quick    # 5 repeats

Every method trains the same model (the demo's ImageNet EfficientNet-Lite0, 64 px) on the same
batch of 32 images with its default config and Adam: forward, backward and optimiser step. The
steps are timed in alternation (``interleaved_medians``) so that load on the machine hits every
method alike; the result is a ratio to piggyback, plus the artifact's bits per masked weight.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import interleaved_medians, write_result
from pb_adapters import KSMConfig, PiggybackConfig, get_piggyback_model
from pb_adapters.training.demo import load_demo_backbone

CONFIGS = {"piggyback": PiggybackConfig, "ksm": KSMConfig}
BATCH, IMAGE_SIZE, NUM_LABELS = 32, 64, 10


def _train_step(method: str, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
    """The model of ``method`` and a closure doing one training step on ``(x, y)``."""
    model = get_piggyback_model(load_demo_backbone(), CONFIGS[method](num_labels=NUM_LABELS))
    model.train()
    params = [p for group in model.parameter_groups().values() for p in group]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def run(quick: bool = False) -> dict[str, Any]:
    """Time a training step of each method; write ``benchmarks/results/methods-cpu.json``."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    y = torch.arange(BATCH) % NUM_LABELS
    models, steps = {}, {}
    for method in CONFIGS:
        models[method], steps[method] = _train_step(method, x, y)
    seconds = interleaved_medians(steps, repeats=5 if quick else 15, warmup=2)
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, model in models.items():
            model.eval()
            folder = model.save_pretrained(Path(tmp) / method, write_card=False)
            weights = (folder / "adapter_model.safetensors").stat().st_size
            size = model.adapter_size()
            sizes[method] = {
                "mask_bits_per_masked_weight": size["bits_per_masked_weight"],
                "file_bits_per_masked_weight": 8 * weights / size["masked_weights"],
                "mask_entries": model.mask_stats().num_masked,
                "masked_weights": size["masked_weights"],
            }
    payload = {
        "setup": f"demo backbone, batch {BATCH}, {IMAGE_SIZE} px, Adam, default configs",
        "train_step_s": seconds,
        "train_step_ratio_to_piggyback": {m: seconds[m] / seconds["piggyback"] for m in seconds},
        "artifact": sizes,
    }
    path = write_result("methods-cpu" if not torch.cuda.is_available() else "methods-gpu", payload)
    for method in CONFIGS:
        print(
            f"{method}: {seconds[method] * 1e3:.0f} ms per step "
            f"(x{payload['train_step_ratio_to_piggyback'][method]:.2f}), "
            f"{sizes[method]['mask_bits_per_masked_weight']:.3f} bits per masked weight"
        )
    print(f"wrote {path}")
    return payload


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 15")
    run(quick=parser.parse_args(argv).quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
