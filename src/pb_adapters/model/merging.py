"""Merging an adapter into the base weights, and taking the adapters out again.

:meth:`MergingMixin.merge_and_unload` returns a plain model with one task's masks applied;
:meth:`MergingMixin.merge_adapter` / :meth:`MergingMixin.unmerge_adapter` do the same in place and
reversibly (the original weights are kept aside, so unmerging restores them bit for bit);
:meth:`MergingMixin.unload` returns the base model as it was before it was wrapped.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, PbAdaptersError
from ..heads import set_label_state
from .task_modules import set_submodule

__all__ = ["MergingMixin"]


class MergingMixin:
    """Merging and unloading of :class:`~pb_adapters.PiggybackModel`, mixed into it (uses its
    adapter layers and task modules)."""

    # -- merged state ---------------------------------------------------------------------------
    def _require_unmerged(self, action: str) -> None:
        if self._unmerged_weights:
            raise PbAdaptersError(
                f"cannot {action} while adapter {self._merged_adapter!r} is merged into the "
                "weights; call unmerge_adapter() first"
            )

    def _swap_weights(self, weights: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
        """Put ``{layer path: weight}`` into the adapter layers' base layers; return the old ones."""
        previous = {}
        for path, weight in weights.items():
            base_layer = self.base_model.get_submodule(path).base_layer
            previous[path] = base_layer.weight
            base_layer.weight = weight
        return previous

    @contextlib.contextmanager
    def _original_weights(self) -> Iterator[None]:
        """Within the block the base layers hold their original weights, merged or not."""
        if not self._unmerged_weights or self._originals_in_place:
            yield
            return
        merged = self._swap_weights(self._unmerged_weights)
        self._originals_in_place = True
        try:
            yield
        finally:
            self._swap_weights(merged)
            self._originals_in_place = False

    def merge_adapter(self, adapter_names: Sequence[str] | None = None) -> None:
        """Merge one adapter's masks into the base weights, in place and reversibly (as PEFT).

        The model then computes at exactly the base model's cost, with the task's weights, head
        and labels. The original weights are kept (the memory of the masked layers' weights) so
        that :meth:`unmerge_adapter` restores them bit for bit. While merged the model can run,
        save and report, but not train, switch or change adapters.

        Args:
            adapter_names: The adapter to merge, as a one-item list (default: the active one);
                it becomes the active adapter.
        """
        names = list(adapter_names) if adapter_names is not None else [self.active_adapter]
        if len(names) != 1 or names[0] is None:
            raise ConfigError(
                f"merge_adapter merges one adapter at a time (a task's masks replace the "
                f"weights), got {names}"
            )
        if self._unmerged_weights:
            if names[0] == self._merged_adapter:
                return
            self._require_unmerged(f"merge {names[0]!r}")
        if self.training:
            raise PbAdaptersError("merge_adapter is for inference; call model.eval() first")
        if names[0] != self.active_adapter:
            self.set_adapter(names[0])
        name = names[0]
        merged: dict[str, nn.Parameter] = {}
        for path, layer in self.adapter_layers():
            if name in layer.adapter_names:
                with torch.no_grad():
                    weight = layer.inference_weight(name).detach().clone()
                merged[path] = nn.Parameter(weight, requires_grad=False)
        self._unmerged_weights = self._swap_weights(merged)
        self._merged_adapter = name
        for path in merged:
            layer = self.base_model.get_submodule(path)
            layer.disabled = True  # the base layer now computes the task's weight itself
            layer._drop_merged()  # free the materialised copy; it equals the merged weight

    def unmerge_adapter(self) -> None:
        """Undo :meth:`merge_adapter`: the base weights are the original ones again, exactly.

        Does nothing when no adapter is merged.
        """
        if not self._unmerged_weights:
            return
        self._swap_weights(self._unmerged_weights)
        for path in self._unmerged_weights:
            layer = self.base_model.get_submodule(path)
            layer.disabled = False
            if not layer.training:
                layer.refresh_merged()
        self._unmerged_weights = {}
        self._merged_adapter = None

    # -- plain models out -----------------------------------------------------------------------
    def merge_and_unload(
        self, adapter_name: str | None = None, *, inplace: bool = False
    ) -> nn.Module:
        """A plain model of the base's own class with the adapter's masks applied and its head.

        The result is a timm model or transformers ``PreTrainedModel`` like the base, usable with
        their own tooling (``save_pretrained``, ``timm`` checkpoints). With ``inplace=False``
        (the default) the result is an independent copy and the wrapper and its other adapters
        stay intact; ``inplace=True`` unwraps this model's base instead (no copy; the wrapper is
        not usable afterwards).
        """
        self._require_unmerged("merge_and_unload")
        name = self._named_or_active(
            adapter_name, "no adapter to merge: pass adapter_name or set_adapter first"
        )
        previous = self.active_adapter
        self.set_adapter(name)
        try:
            memo: dict[int, Any] = {}
            replacements: dict[str, nn.Module] = {}
            for path, layer in self.adapter_layers():
                base_layer = layer.base_layer
                inner: dict[int, Any] = {}
                if name in layer.adapter_names:
                    with torch.no_grad():
                        merged = layer.inference_weight(name).detach().clone()
                    inner[id(base_layer.weight)] = nn.Parameter(merged)
                if inner or not inplace:
                    base_layer = copy.deepcopy(base_layer, inner)
                memo[id(layer)] = base_layer
                replacements[path] = base_layer
            if inplace:
                model = self.base_model
                for path, plain in replacements.items():
                    set_submodule(model, path, plain)
            else:
                model = copy.deepcopy(self.base_model, memo)  # adapter layers map to plain ones
        finally:
            if not inplace and previous is not None:
                self.set_adapter(previous)
        for param in model.parameters():
            param.requires_grad_(True)  # a plain model, as timm / transformers create it
        return model

    def unload(self) -> nn.Module:
        """Take every adapter out and return the base model exactly as it was wrapped (as PEFT).

        The base gets back its original layers, head, label metadata and ``requires_grad``
        flags; its weights were never changed (a merged adapter is unmerged first). The wrapper
        holds no adapters afterwards. Use :meth:`merge_and_unload` to keep a task instead.
        """
        self.unmerge_adapter()
        self._install(None)
        set_label_state(self.base_model, self._base_labels)
        for path, layer in list(self.adapter_layers()):
            set_submodule(self.base_model, path, layer.base_layer)
        for param, flag in self._base_requires_grad:
            param.requires_grad_(flag)
        self.base_model.train(self.base_model.training)  # norms the wrapper kept in eval mode
        for store in (self.peft_config, self._module_kinds, self._labels, self._recorded):
            store.clear()
        self._frozen.clear()
        self.task_modules.clear()
        self.active_adapter = None
        return self.base_model
