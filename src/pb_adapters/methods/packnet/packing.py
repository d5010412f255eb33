"""Model-level steps of the PackNet schedule: prune a training task, then pack it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ConfigError
from .layer import PackNetLayer

if TYPE_CHECKING:
    from ...model import PiggybackModel

__all__ = ["finalize_task", "prune_task"]


def _layers(model: PiggybackModel, name: str) -> list[tuple[str, PackNetLayer]]:
    model._require_adapter(name)
    layers = [
        (path, layer)
        for path, layer in model.adapter_layers()
        if isinstance(layer, PackNetLayer) and name in layer.adapter_names
    ]
    if not layers:
        raise ConfigError(f"adapter {name!r} is not a PackNet task")
    return layers


def prune_task(model: PiggybackModel, name: str, ratio: float | None = None) -> dict[str, float]:
    """Prune the training task ``name`` in every layer and record the pruning history.

    Per layer, the ``ratio`` (default: the task config's ``prune_ratio``) smallest-magnitude
    weights among those the task trains are set to 0 and released for later tasks. Returns (and
    stores in ``model.peft_config[name].pruned_fraction``) the fraction released per layer.
    """
    config = model.peft_config[name]
    ratio = config.prune_ratio if ratio is None else float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"ratio must be in [0, 1], got {ratio!r}")
    history = {path: layer.prune(name, ratio) for path, layer in _layers(model, name)}
    config.pruned_fraction = history
    return history


def finalize_task(model: PiggybackModel, name: str) -> None:
    """Pack task ``name``: its kept weights are frozen into the shared packed weights for good.

    Afterwards its layers hold no trainable state; a next task can be added.
    """
    for _, layer in _layers(model, name):
        layer.finalize(name)
    model.set_adapter(model.active_adapter or name)
