"""The Accelerate trainer: real short runs (piggyback and baselines), schedules, best-epoch restore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.training.data import DataConfig, build_transforms
from pb_adapters.training.demo import load_demo_backbone, load_demo_dataset
from pb_adapters.training.trainer import (
    PiggybackTrainer,
    TrainingArguments,
    prepare_baseline_model,
)
from tests.devices import cpu_copy, equal
from tests.factories import tiny_timm, tiny_transformers


def _digits(image_size: int, max_train: int, max_eval: int, mean=(0.5,) * 3, std=(0.5,) * 3):
    splits = load_demo_dataset(seed=0).limit(max_train, max_eval, seed=0)
    cfg = DataConfig(
        image_size=image_size, crop_pct=1.0, mean=mean, std=std, interpolation="bicubic"
    )
    train_tf, eval_tf = build_transforms(data_config=cfg, hflip=False, train_scale=(0.6, 1.0))
    return splits.set_transforms(train_tf, eval_tf)


def _args(tmp_path: Path, **kwargs) -> TrainingArguments:
    defaults = {
        "output_dir": str(tmp_path / "run"),
        "num_epochs": 1,
        "batch_size": 16,
        "num_workers": 0,
        "disable_progress_bar": True,
        "seed": 0,
        "report_to": "none",
    }
    defaults.update(kwargs)
    return TrainingArguments(**defaults)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_piggyback_on_the_real_backbone_learns_digits(tmp_path: Path) -> None:
    splits = _digits(48, max_train=800, max_eval=200)
    base = load_demo_backbone()
    reference = cpu_copy(base.state_dict())  # the trainer may move the base to CUDA
    torch.manual_seed(0)
    model = get_piggyback_model(
        base, PiggybackConfig(id2label=splits.id2label, mask_lr=1e-4, head_lr=1e-2)
    )
    args = _args(tmp_path, num_epochs=2, batch_size=32, max_steps_per_epoch=12)
    result = PiggybackTrainer(model, args, splits=splits).train()

    assert result.test["num_samples"] == 200
    assert result.test["top1"] > 0.35, result.test  # chance is 0.10
    assert result.validation["top1"] > 0.35
    # the base never changes: weights and BatchNorm running statistics are untouched
    for name, tensor in base.state_dict().items():
        if name in reference and not name.startswith("classifier"):
            assert equal(tensor, reference[name]), name
    # step decay at the midpoint: x0.1 from epoch 2 on
    assert [h["lr"]["masks"] for h in result.history] == pytest.approx([1e-4, 1e-5])
    assert [h["lr"]["head"] for h in result.history] == pytest.approx([1e-2, 1e-3])
    # records on disk
    out = Path(args.output_dir)
    lines = _read_jsonl(out / "metrics.jsonl")
    assert [line.get("epoch") for line in lines[:2]] == [1, 2]
    assert lines[-1]["split"] == "test" and lines[-1]["test_top1"] == result.test["top1"]
    results = json.loads((out / "results.json").read_text())
    assert results["best_epoch"] == result.best_epoch and results["dataset"] == "mnist-5k"
    # the artifact reloads onto a fresh backbone and scores the same
    assert result.artifact_dir is not None
    saved = json.loads((result.artifact_dir / "adapter_config.json").read_text())
    assert saved["metrics"]["test_accuracy"] == result.test["top1"]
    assert saved["datasets"] == ["mnist-5k"]
    reloaded = PiggybackModel.from_pretrained(load_demo_backbone(), result.artifact_dir)
    trainer = PiggybackTrainer(reloaded, _args(tmp_path, save_artifact=False), splits=splits)
    reloaded.to(trainer.accelerator.device)  # evaluate() moves the batches, not the model
    assert trainer.evaluate(splits.test)["top1"] == result.test["top1"]


def test_head_only_baseline_keeps_the_backbone(tmp_path: Path) -> None:
    splits = _digits(32, max_train=96, max_eval=40)
    model = prepare_baseline_model(tiny_timm("test_efficientnet"), 10, splits.id2label)
    assert model.get_classifier().out_features == 10
    before = cpu_copy(model.state_dict())
    args = _args(tmp_path, train_mode="head", head_lr=1e-2, max_steps_per_epoch=3)
    result = PiggybackTrainer(model, args, splits=splits).train()
    assert result.artifact_dir is None and result.test["num_samples"] == 40
    after = model.state_dict()
    changed = {k for k in before if not equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}
    assert not (Path(args.output_dir) / "adapter_config.json").exists()


def test_finetune_baseline_trains_every_weight(tmp_path: Path) -> None:
    splits = _digits(32, max_train=96, max_eval=40)
    model = prepare_baseline_model(tiny_timm("test_resnet"), 10, splits.id2label)
    before = cpu_copy(dict(model.named_parameters()))
    args = _args(tmp_path, train_mode="finetune", backbone_lr=1e-3, max_steps_per_epoch=3)
    trainer = PiggybackTrainer(model, args, splits=splits)
    names = [g["name"] for g in trainer.param_groups()]
    assert names == ["backbone", "head"]
    trainer.train()
    unchanged = [k for k, v in model.named_parameters() if equal(v, before[k])]
    assert unchanged == []


def test_transformers_model_trains_through_pixel_values(tmp_path: Path) -> None:
    splits = _digits(32, max_train=48, max_eval=20)
    model = get_piggyback_model(tiny_transformers("vit"), PiggybackConfig(id2label=splits.id2label))
    args = _args(tmp_path, max_steps_per_epoch=2, gradient_accumulation_steps=2, max_grad_norm=1.0)
    result = PiggybackTrainer(model, args, splits=splits).train()
    assert result.test["num_samples"] == 20
    assert (result.artifact_dir / "adapter_model.safetensors").is_file()
    reloaded = PiggybackModel.from_pretrained(tiny_transformers("vit"), result.artifact_dir)
    assert reloaded.config.id2label[3] == "3"


def test_the_best_epoch_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = _digits(32, max_train=64, max_eval=20)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = _args(tmp_path, num_epochs=3, max_steps_per_epoch=2, mask_lr=0.01, save_artifact=False)
    trainer = PiggybackTrainer(model, args, splits=splits)
    scripted = iter([0.5, 0.9, 0.7])  # validation top-1 of epochs 1..3: epoch 2 is the best
    seen: list[dict[str, torch.Tensor]] = []
    original = trainer.evaluate

    def fake_evaluate(loader, model=None):
        state = {
            n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad
        }
        seen.append(state)
        value = next(scripted, None)
        if value is None:  # the final test evaluation
            return original(loader, model)
        return {"loss": 1.0 - value, "top1": value, "top5": 1.0, "num_samples": 20}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    result = trainer.train()
    assert result.best_epoch == 2 and result.validation["top1"] == 0.9
    final = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(final[n], seen[1][n]) for n in final)
    assert not all(torch.equal(final[n], seen[2][n]) for n in final)


def test_schedules(tmp_path: Path) -> None:
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=3))
    train = _digits(16, max_train=10, max_eval=10).train
    step = PiggybackTrainer(model, _args(tmp_path, num_epochs=10), train)._lr_lambda(100, 10)
    assert (step(49), step(50)) == (1.0, 0.1)
    cos = PiggybackTrainer(model, _args(tmp_path, lr_scheduler="cosine"), train)._lr_lambda(100, 10)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    const = PiggybackTrainer(model, _args(tmp_path, lr_scheduler="constant"), train)._lr_lambda(
        100, 10
    )
    assert const(99) == 1.0


def test_arguments_and_mode_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_mode"):
        TrainingArguments(train_mode="lora")
    with pytest.raises(ValueError, match="batch_size"):
        TrainingArguments(batch_size=0)
    train = _digits(16, max_train=10, max_eval=10).train
    with pytest.raises(TypeError, match="needs a PiggybackModel"):
        PiggybackTrainer(tiny_timm(), _args(tmp_path), train)
    wrapped = get_piggyback_model(tiny_timm(), PiggybackConfig(num_labels=3))
    with pytest.raises(TypeError, match="plain backbone"):
        PiggybackTrainer(wrapped, _args(tmp_path, train_mode="finetune"), train)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_scores_float32(
    precision: str, device: torch.device, tmp_path: Path
) -> None:
    from accelerate.state import AcceleratorState

    if precision == "fp16" and device.type != "cuda":
        pytest.skip("fp16 with loss scaling is a CUDA feature (PB_TEST_DEVICE=cuda runs it)")
    splits = _digits(32, 48, 16)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    before = cpu_copy({n: p for n, p in model.named_parameters() if "mask_scores" in n})
    seen: list[torch.dtype] = []
    layer = next(layer for _, layer in model.adapter_layers())
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    AcceleratorState._reset_state(True)  # the process-wide state was made without mixed precision
    try:
        args = _args(
            tmp_path,
            max_steps_per_epoch=3,
            mask_lr=1e-2,
            max_grad_norm=1.0,
            mixed_precision=precision,
        )
        trainer = PiggybackTrainer(model, args, splits=splits)
        acc = trainer.accelerator
        assert acc.mixed_precision == precision and acc.device.type == device.type
        # fp16 gradients underflow without a loss scale: Accelerate scales (and unscales) them
        assert (acc.scaler is not None) == (precision == "fp16")
        result = trainer.train()
        scale = acc.scaler.get_scale() if acc.scaler is not None else None
    finally:
        handle.remove()
        AcceleratorState._reset_state(True)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert half in seen  # the layers computed under autocast
    scores = {n: p for n, p in trainer.model.named_parameters() if "mask_scores" in n}
    assert {p.dtype for p in scores.values()} == {torch.float32}
    assert {p.device.type for p in scores.values()} == {device.type}
    assert all(bool(torch.isfinite(p).all()) for p in scores.values())
    assert any(not equal(before[n], p) for n, p in scores.items())  # the scaled steps applied
    assert scale is None or scale > 0
    assert result.test["num_samples"] == 16 and 0.0 <= result.test["top1"] <= 1.0


@pytest.mark.parametrize("flag", [True, False])
def test_deterministic_argument_covers_the_run_and_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: bool
) -> None:
    splits = _digits(32, max_train=32, max_eval=16)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = _args(tmp_path, max_steps_per_epoch=1, deterministic=flag, save_artifact=False)
    trainer = PiggybackTrainer(model, args, splits=splits)
    seen: list[bool] = []
    train_epochs = trainer._train_epochs

    def spy(run) -> None:
        seen.append(torch.are_deterministic_algorithms_enabled())
        train_epochs(run)

    monkeypatch.setattr(trainer, "_train_epochs", spy)
    before = torch.are_deterministic_algorithms_enabled()
    trainer.train()
    assert seen == [flag]
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize("main", [True, False], ids=["main process", "other process"])
def test_every_process_stops_when_the_output_folder_cannot_be_written(tmp_path, main):
    from types import SimpleNamespace

    from pb_adapters.training.errors import OutputError
    from pb_adapters.training.run_state import RunState

    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    gathered = []

    def gather(flag: torch.Tensor) -> torch.Tensor:
        gathered.append(int(flag.item()))
        # what every process hears: the main process (rank 0) failed, the other did not
        return torch.tensor([1, 0]) if not main else torch.cat([flag, torch.tensor([0])])

    acc = SimpleNamespace(is_main_process=main, device=torch.device("cpu"), gather=gather)
    trainer = SimpleNamespace(
        accelerator=acc, output_dir=a_file, args=SimpleNamespace(metrics_file="metrics.jsonl")
    )
    message = "cannot write to the output folder" if main else "the main process cannot write"
    with pytest.raises(OutputError, match=message):
        PiggybackTrainer._init_outputs(trainer, RunState())
    assert gathered == [1 if main else 0]  # each process told the others its own verdict
    assert a_file.read_text() == "not a folder"
