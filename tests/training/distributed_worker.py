"""One rank of a real multi-process training run, started by ``accelerate launch`` or ``torchrun``.

Trains a piggyback adapter on a tiny timm model and the demo digits, then writes this rank's
mask bits, scores and evaluation results to ``<out>/rank-<N>.safetensors`` / ``.json`` so the
test can compare ranks with each other and with a single-process run. Usage::

    python distributed_worker.py OUT_DIR BATCH_SIZE [--resume] [--fsdp] [--gpu]

``--fsdp`` shards the model with FSDP2: on GPUs through the launcher's ``--use_fsdp`` flags, on
CPU processes (without ``--gpu``) through :func:`~pb_adapters.training.sharding.cpu_fsdp_accelerator`.
Under FSDP only the main process writes tensors (gathered whole); every rank writes how many
trainable values it holds itself.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.training.data import DataConfig, build_transforms
from pb_adapters.training.demo import load_demo_dataset
from pb_adapters.training.run_state import RunState
from pb_adapters.training.sharding import (
    cpu_fsdp_accelerator,
    full_parameters,
    is_sharded,
    load_best_slice,
    local_tensor,
    reshard,
    uses_fsdp,
)
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments
from tests.factories import tiny_timm

#: The residual blocks of ``test_resnet``: each becomes one FSDP unit.
BLOCKS = ["BasicBlock", "Bottleneck"]


def _accelerator(fsdp: bool, gpu: bool) -> Accelerator:
    if gpu:
        acc = Accelerator()  # FSDP, if asked for, comes from the launcher's flags
    elif fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=BLOCKS,
        )
        acc = cpu_fsdp_accelerator(plugin)
    else:
        acc = Accelerator(cpu=True)
    if fsdp and not acc.is_fsdp2:
        raise RuntimeError(f"asked for FSDP2, Accelerate set up {acc.distributed_type}")
    return acc


def _dump(acc: Accelerator, model: torch.nn.Module, out: Path) -> None:
    """Write this rank's mask bits and scores (under FSDP: the main process's, gathered)."""
    sharded = is_sharded(model)
    with full_parameters(model, acc.is_main_process):
        if acc.is_main_process or not sharded:
            tensors = {}
            for path, layer in model.adapter_layers():
                name = layer.active_adapter
                tensors[f"mask:{path}"] = layer.mask(name).detach().to(torch.int8).cpu()
                tensors[f"score:{path}"] = layer.mask_scores[name].detach().cpu().contiguous()
            save_file(tensors, out / f"rank-{acc.process_index}.safetensors")


def _restore_from_last_checkpoint(
    trainer: PiggybackTrainer, model: torch.nn.Module, checkpoints: Path
) -> None:
    """Zero the trainable state, then restore it from the last checkpoint's best-epoch file
    (this process's slice under FSDP), which holds the state training ended with: the dumped
    tensors then show that the file and the restore are right."""
    reshard(model)  # FSDP: zero the slices themselves, not the outer unit's gathered copy
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                local_tensor(param).zero_()
    last = sorted(checkpoints.glob("step-*"))[-1]
    acc = trainer.accelerator
    if uses_fsdp(acc):
        best = load_best_slice(last, acc.process_index)
    else:
        best = RunState.load(last).best_state
    trainer._restore(model, best)


def main(out: Path, batch_size: int, resume: bool, fsdp: bool, gpu: bool) -> None:
    """Train, then dump this rank's masks, scores and metrics under ``out``."""
    if gpu:  # the same kernels in every run: DDP and FSDP runs compare bit for bit
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    acc = _accelerator(fsdp, gpu)
    splits = load_demo_dataset(seed=0).limit(96, 24, seed=0)
    cfg = DataConfig(image_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    splits.set_transforms(*build_transforms(data_config=cfg, hflip=True, train_scale=(0.6, 1.0)))
    torch.manual_seed(0)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = TrainingArguments(
        output_dir=str(out / "run"),
        num_epochs=2,
        batch_size=batch_size,
        max_steps_per_epoch=3,
        mask_lr=2e-3,
        head_lr=1e-2,
        num_workers=0,
        disable_progress_bar=True,
        save_steps=1,
        save_total_limit=None,
        resume_from_checkpoint="latest" if resume else None,
    )
    trainer = PiggybackTrainer(model, args, splits=splits, accelerator=acc)
    result = trainer.train()
    unwrapped = acc.unwrap_model(model)
    _restore_from_last_checkpoint(trainer, unwrapped, out / "run" / "checkpoints")
    _dump(acc, unwrapped, out)
    trainable = [p for p in unwrapped.parameters() if p.requires_grad]
    (out / f"rank-{acc.process_index}.json").write_text(
        json.dumps(
            {
                "num_processes": acc.num_processes,
                # set by torchrun: which machine this rank ran on, and its processes there
                "machine_rank": int(os.environ.get("GROUP_RANK", 0)),
                "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                "sharded": is_sharded(unwrapped),
                "trainable_local": sum(local_tensor(p).numel() for p in trainable),
                "trainable_total": sum(p.numel() for p in trainable),
                "test": result.test,
                "validation": result.validation,
                "best_epoch": result.best_epoch,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("batch_size", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--gpu", action="store_true")
    cli = parser.parse_args()
    main(cli.out, cli.batch_size, cli.resume, cli.fsdp, cli.gpu)
