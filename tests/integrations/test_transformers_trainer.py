"""The stock transformers.Trainer on a PiggybackModel: train, checkpoint, resume, load back."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from pb_adapters import (
    ArtifactError,
    ConfigError,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.integrations import (
    PiggybackHFTrainer,
    create_optimizer,
    load_trainer_checkpoint,
)
from tests.factories import call, tiny_timm, tiny_transformers


def _dataset(n: int = 16) -> Dataset:
    """Images and labels as a datasets.Dataset; Trainer drops columns forward does not take."""
    g = torch.Generator().manual_seed(0)
    return Dataset.from_dict(
        {
            "pixel_values": torch.randn(n, 3, 32, 32, generator=g).numpy(),
            "label": torch.randint(0, 3, (n,), generator=g).tolist(),
            "file_name": [f"{i}.png" for i in range(n)],  # a column forward does not take
        }
    ).with_format("torch")


def _base(kind: str):
    return tiny_timm("test_resnet") if kind == "timm" else tiny_transformers("vit")


def _build(kind: str, head_seed: int = 0, **config) -> PiggybackModel:
    base = _base(kind)
    torch.manual_seed(head_seed)  # the fresh head's initialisation
    return get_piggyback_model(base, PiggybackConfig(num_labels=3, **config))


def _args(out, **overrides) -> TrainingArguments:
    settings = {
        "max_steps": 6,
        "per_device_train_batch_size": 4,
        "save_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    return TrainingArguments(output_dir=str(out), **{**settings, **overrides})


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_stock_trainer_trains_checkpoints_resumes_exactly_and_loads_back(
    tmp_path, kind, transformers_logs
):
    model = _build(kind)
    fingerprint = model.base_fingerprint()
    trainer = Trainer(model=model, args=_args(tmp_path / "run"), train_dataset=_dataset())
    trainer.train()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert model.base_fingerprint() == fingerprint  # only masks and head trained
    predictions = trainer.predict(_dataset(8))
    assert predictions.predictions.shape == (8, 3) and math.isfinite(
        predictions.metrics["test_loss"]
    )
    final = _state(model)

    resumed = _build(kind, head_seed=1)
    assert not torch.equal(
        resumed.state_dict()["task_modules.default." + _head_key(resumed) + ".weight"],
        final["task_modules.default." + _head_key(resumed) + ".weight"],
    )
    again = Trainer(model=resumed, args=_args(tmp_path / "resumed"), train_dataset=_dataset())
    again.train(resume_from_checkpoint=str(run / "checkpoint-3"))
    now = _state(resumed)
    assert now.keys() == final.keys()
    assert all(torch.equal(now[k], v) for k, v in final.items())
    # The resumed history: the checkpoint's first three steps, then three recomputed ones.
    resumed_losses = [h["loss"] for h in again.state.log_history if "loss" in h]
    assert resumed_losses == losses
    messages = [r.getMessage() for r in transformers_logs.records]
    assert not [m for m in messages if "keys" in m], messages

    fresh = _build(kind, head_seed=2)
    folder = load_trainer_checkpoint(fresh, run / "checkpoint-6").save_pretrained(tmp_path / "task")
    loaded = PiggybackModel.from_pretrained(_base(kind), folder).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(call(loaded, x), call(model.eval(), x))


def _head_key(model: PiggybackModel) -> str:
    return next(iter(model.task_modules["default"].keys()))


def test_load_trainer_checkpoint_refuses_another_model_and_changes_nothing(tmp_path):
    model = _build("timm")
    Trainer(
        model=model, args=_args(tmp_path, max_steps=1, save_steps=1), train_dataset=_dataset()
    ).train()
    other = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(num_labels=4))
    before = _state(other)
    with pytest.raises(ArtifactError, match="another shape"):
        load_trainer_checkpoint(other, tmp_path / "checkpoint-1")
    two = _build("timm")
    two.add_adapter("other", PiggybackConfig(num_labels=2))
    with pytest.raises(ArtifactError, match="missing"):
        load_trainer_checkpoint(two, tmp_path / "checkpoint-1")
    with pytest.raises(ArtifactError, match="no such file"):
        load_trainer_checkpoint(model, tmp_path / "nowhere")
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())


def test_create_optimizer_gives_each_group_its_methods_rate(tmp_path):
    model = _build("timm", mask_lr=1e-3, head_lr=1e-2)
    args = _args(tmp_path, max_steps=3, save_strategy="no", lr_scheduler_type="constant")
    optimizer = create_optimizer(model, args)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {"masks": 1e-3, "head": 1e-2}
    assert type(optimizer) is Trainer.get_optimizer_cls_and_kwargs(args)[0]
    before = _state(model)
    trainer = Trainer(
        model=model, args=args, train_dataset=_dataset(), optimizers=(optimizer, None)
    )
    trainer.train()
    rates = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates == {"masks": 1e-3, "head": 1e-2}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(".mask_scores." in k for k in changed) and any(
        k.startswith("task_modules.") for k in changed
    )

    subclassed = PiggybackHFTrainer(model=_build("timm", mask_lr=1e-3, head_lr=1e-2), args=args)
    subclassed.create_optimizer()
    assert {g["name"]: g["lr"] for g in subclassed.optimizer.param_groups} == rates
    tuned = create_optimizer(model, None, learning_rates={"masks": 5e-4})
    assert type(tuned) is torch.optim.Adam
    assert {g["name"]: g["lr"] for g in tuned.param_groups} == {"masks": 5e-4, "head": 1e-2}
    with pytest.raises(ConfigError, match="no parameter group"):
        create_optimizer(model, args, learning_rates={"norms": 1e-3})
