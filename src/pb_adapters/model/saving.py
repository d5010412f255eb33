"""Writing adapters out: the artifact's records and tensors, local folders, sizes and the Hub."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .._version import __version__
from ..card import render_card_files
from ..config import AdapterConfig
from ..errors import ConfigError
from ..hub import push_folder_to_hub, validate_hub_target
from ..mask_coding import DEFAULT_MASK_ENCODING, encode_bit_planes
from ..methods import get_method
from ..registry import MethodSpec
from ..serialization import build_artifact, commit_artifact
from .task_modules import module_path, module_tensors

__all__ = ["SavingMixin"]


def check_results(metrics: Any, datasets: Any) -> None:
    """Refuse ``metrics`` / ``datasets`` an artifact cannot record (they are stored as JSON)."""
    if metrics is not None:
        if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
            raise ConfigError("metrics must be a dict with string keys, e.g. {'accuracy': 0.98}")
        try:
            json.dumps(metrics)
        except (TypeError, ValueError, RecursionError) as err:
            raise ConfigError(f"metrics must hold JSON values only: {err}") from None
    if datasets is not None and not (
        isinstance(datasets, list) and all(isinstance(d, str) for d in datasets)
    ):
        raise ConfigError("datasets must be a list of strings")


class SavingMixin:
    """Artifact writing of :class:`~pb_adapters.PiggybackModel`, mixed into it (uses its adapter
    state and base identity)."""

    def _artifact_group(self, name: str) -> list[str]:
        """The adapters one artifact of ``name`` stores: ``[name]``, or every adapter that shares
        layer state with it (in the layers' order) for methods with ``shared_state``."""
        spec = get_method(self.peft_config[name].method)
        if spec.layer_class.shared_state:
            for _, layer in self.adapter_layers():
                if name in layer.adapter_names:
                    return [n for n in layer.adapter_names if n in self.peft_config]
        return [name]

    def _task_record(
        self,
        name: str,
        prefix: str,
        metrics: dict[str, Any] | None,
        datasets: list[str] | None,
        tensors: dict[str, Tensor],
    ) -> dict[str, Any]:
        """What an artifact records about one task (its tensors go into ``tensors``)."""
        saved = []
        kinds = self._module_kinds[name]
        for key, module in self.task_modules[name].items():
            path = module_path(key)
            own_tensors = module_tensors(module)
            for tkey, tensor in own_tensors.items():
                tensors[f"{prefix}{path}.{tkey}"] = tensor
            saved.append(
                {
                    "path": path,
                    "kind": kinds[key],
                    "type": type(module).__name__,
                    "tensors": {k: list(v.shape) for k, v in own_tensors.items()},
                }
            )
        labels = self._labels[name]
        return {
            "config": self.peft_config[name].to_dict(),
            "head": {
                "paths": list(self._head_paths),
                "num_labels": labels.num_labels,
                "stored": True,
            },
            "id2label": {str(k): v for k, v in (labels.id2label or {}).items()} or None,
            "label2id": labels.label2id,
            "saved_modules": saved,
            "metrics": metrics,
            "datasets": datasets,
        }

    def _layer_records(
        self,
        name: str,
        spec: MethodSpec,
        config: AdapterConfig,
        tensors: dict[str, Tensor],
        planes: list[str],
    ) -> list[dict[str, Any]]:
        """One record per adapter layer of ``name``; its tensors go into ``tensors`` and the keys
        of its bit planes into ``planes``."""
        records: list[dict[str, Any]] = []
        for path, layer in self.adapter_layers():
            if name not in layer.adapter_names:
                continue
            for key, tensor in layer.export_adapter(name).items():
                tensors[f"layers.{path}.{key}"] = tensor
                if key in spec.layer_class.bit_plane_keys:
                    planes.append(f"layers.{path}.{key}")
            zeros, entries = layer.mask_counts(name)
            shape = list(layer.base_layer.weight.shape)
            records.append(
                {
                    "name": path,
                    "type": type(layer.base_layer).__name__,
                    "shape": shape,
                    "numel": math.prod(shape),
                    "encoding": spec.layer_class.encoding_for(config),
                    "zeros": zeros,
                    "entries": entries,  # mask entries: fewer than numel when entries are shared
                }
            )
        return records

    def _artifact(
        self, name: str, metrics: dict[str, Any] | None, datasets: list[str] | None
    ) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
        """The config dict, the tensors (bit planes packed) and the keys of the bit planes."""
        with self._original_weights():  # a merged model saves what it would save unmerged
            return self._artifact_unmerged(name, metrics, datasets)

    def _artifact_unmerged(
        self, name: str, metrics: dict[str, Any] | None, datasets: list[str] | None
    ) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
        group = self._artifact_group(name)
        top = group[-1]  # the artifact's main fields describe the newest task of a group
        config = self.peft_config[top]
        spec = get_method(config.method)
        tensors: dict[str, Tensor] = {}
        planes: list[str] = []
        records = self._layer_records(top, spec, config, tensors, planes)

        def task_metrics(task: str) -> tuple[dict[str, Any] | None, list[str] | None]:
            if task == name and (metrics is not None or datasets is not None):
                return metrics, datasets
            return self._recorded.get(task, (None, None))

        task = self._task_record(top, "modules.", *task_metrics(top), tensors)
        # The writer adds format_version: it depends on whether any plane gets entropy-coded.
        data: dict[str, Any] = {
            "library": "pb-adapters",
            "library_version": __version__,
            "method": config.method,
            "config": task.pop("config"),
            "base_model": self._artifact_identity(config),
            "modules": records,
            **task,
        }
        if spec.layer_class.shared_state:
            data["task_name"] = top
            data["tasks"] = [
                {"name": other}
                | self._task_record(other, f"tasks.{other}.", *task_metrics(other), tensors)
                for other in group[:-1]
            ]
        # Every stored config names the base as the record does (what the weights bear out).
        base = data["base_model"]
        for record in [data, *data.get("tasks", [])]:
            record["config"]["base_model_name_or_path"] = base["name_or_path"]
            record["config"]["base_model_revision"] = base["revision"]
        return data, tensors, planes

    def record_metrics(
        self,
        adapter_name: str,
        metrics: dict[str, Any] | None,
        datasets: list[str] | None = None,
    ) -> None:
        """Remember an adapter's evaluation results for the artifacts that store it.

        Artifacts holding several tasks (PackNet's packed network) write every task's recorded
        metrics; loading an artifact records the metrics it holds.
        """
        self._require_adapter(adapter_name)
        check_results(metrics, datasets)
        self._recorded[adapter_name] = (metrics, datasets)

    def save_pretrained(
        self,
        save_directory: str | Path,
        adapter_name: str | None = None,
        *,
        selected_adapters: Sequence[str] | None = None,
        metrics: dict[str, Any] | None = None,
        datasets: list[str] | None = None,
        write_card: bool = True,
        repo_id: str | None = None,
        subfolder: str | None = None,
        mask_encoding: str = DEFAULT_MASK_ENCODING,
    ) -> Path:
        """Write one adapter (default: the active one) as an artifact folder.

        The folder gets ``adapter_config.json`` and ``adapter_model.safetensors`` (masks
        entropy-coded or bit-packed, head and per-task norm weights) and, unless
        ``write_card=False``, a model card (``README.md`` with a per-layer sparsity plot, and a
        small ``config.json``). ``metrics`` (e.g. ``{"accuracy": 0.98}``) and ``datasets`` are
        recorded for the card; ``repo_id``/``subfolder`` make the card's usage snippet point at
        the Hub. The artifact files are replaced atomically.

        ``selected_adapters`` saves several adapters in PEFT's layout: ``"default"`` in
        ``save_directory`` itself, every other adapter in a subfolder named after it (load it
        with ``load_adapter(save_directory, name, subfolder=name)``);
        ``selected_adapters=list(model.peft_config)`` saves them all.

        ``mask_encoding="ans"`` (the default) entropy-codes each mask plane that gets smaller
        for it (artifact format version 2); ``"bitpack"`` stores 1 bit per entry (format
        version 1, which releases before entropy coding read as well).

        The files are replaced together under the folder's lock: a concurrent save into the same
        folder waits, a reader sees the folder before or after the save, and on any error
        (:class:`~pb_adapters.errors.StorageError` for a full disk, ``TargetExistsError`` when
        the path is a file) the folder is left as it was.
        """
        if selected_adapters is not None:
            return self._save_selected(
                Path(save_directory),
                adapter_name,
                list(selected_adapters),
                metrics=metrics,
                datasets=datasets,
                write_card=write_card,
                repo_id=repo_id,
                subfolder=subfolder,
                mask_encoding=mask_encoding,
            )
        name = self._named_or_active(adapter_name, "no adapter to save: add or load one first")
        check_results(metrics, datasets)
        if not isinstance(save_directory, (str, os.PathLike)):
            raise ConfigError(f"save_directory must be a path, not {type(save_directory).__name__}")
        # Everything is made in memory first: whatever is refused is refused before the folder
        # is touched, and the files then replace the old ones together.
        data, tensors, planes = self._artifact(name, metrics, datasets)
        config, payload = build_artifact(
            data, tensors, bit_planes=planes, mask_encoding=mask_encoding
        )
        card = (
            render_card_files(config, payload, repo_id, subfolder=subfolder) if write_card else None
        )
        folder = commit_artifact(save_directory, config, payload, card)
        if metrics is not None or datasets is not None:
            self._recorded[name] = (metrics, datasets)
        return folder

    def _save_selected(
        self,
        root: Path,
        adapter_name: str | None,
        names: list[str],
        *,
        metrics: dict[str, Any] | None,
        datasets: list[str] | None,
        subfolder: str | None,
        **kwargs: Any,
    ) -> Path:
        """``save_pretrained(selected_adapters=names)``: PEFT's layout, every name checked first."""
        if adapter_name is not None:
            raise ConfigError("pass adapter_name or selected_adapters, not both")
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"selected_adapters must name each adapter once, got {names}")
        for name in names:
            self._require_adapter(name)
        if len(names) > 1 and (metrics is not None or datasets is not None):
            raise ConfigError(
                "metrics= and datasets= describe one adapter; record_metrics each adapter instead"
            )
        for name in names:
            inner = None if name == "default" else name
            self.save_pretrained(
                root if inner is None else root / inner,
                name,
                metrics=metrics,
                datasets=datasets,
                subfolder="/".join(p for p in (subfolder, inner) if p) or None,
                **kwargs,
            )
        return root

    def adapter_size(
        self, adapter_name: str | None = None, *, mask_encoding: str = DEFAULT_MASK_ENCODING
    ) -> dict[str, float]:
        """Bytes an adapter takes in an artifact saved with ``mask_encoding``, and bits per entry.

        Keys: ``mask_bytes`` and ``bits_per_masked_weight`` (the masks as stored),
        ``packed_mask_bytes`` and ``packed_bits_per_masked_weight`` (1 bit per plane entry),
        ``entropy_bits_per_masked_weight`` (the masks' empirical order-0 entropy, see
        :meth:`mask_stats`), ``module_bytes`` (heads, norms, saved modules) and
        ``masked_weights``.
        """
        name = self._named_or_active(adapter_name, "no adapter is active; pass adapter_name")
        data, packed, planes = self._artifact(name, None, None)
        stored, _ = encode_bit_planes(packed, planes, mask_encoding)

        def nbytes(tensors: dict[str, Tensor], prefix: str) -> int:
            return sum(
                t.numel() * t.element_size() for k, t in tensors.items() if k.startswith(prefix)
            )

        mask_bytes, packed_bytes = nbytes(stored, "layers."), nbytes(packed, "layers.")
        masked = max(sum(r["numel"] for r in data["modules"]), 1)
        return {
            "mask_bytes": mask_bytes,
            "packed_mask_bytes": packed_bytes,
            "module_bytes": nbytes(packed, "modules."),
            "masked_weights": masked,
            "bits_per_masked_weight": 8 * mask_bytes / masked,
            "packed_bits_per_masked_weight": 8 * packed_bytes / masked,
            "entropy_bits_per_masked_weight": self.mask_stats(name).entropy_bits / masked,
        }

    def push_to_hub(
        self,
        repo_id: str,
        adapter_name: str | None = None,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        subfolder: str | None = None,
        metrics: dict[str, Any] | None = None,
        datasets: list[str] | None = None,
    ) -> str:
        r"""Upload one adapter (default: the active one) with its model card to the Hub.

        The repository (and the branch ``revision``) is created when missing; several tasks can
        share a repository under different ``subfolder``\ s. Returns the commit url.
        """
        # Refuse bad names before anything is written, even to a temporary folder.
        validate_hub_target(repo_id, revision=revision, subfolder=subfolder)
        self._named_or_active(adapter_name, "no adapter to push: add or load one first")
        with tempfile.TemporaryDirectory(prefix="pb-adapters-push-") as tmp:
            folder = Path(tmp) / "artifact"
            self.save_pretrained(
                folder,
                adapter_name,
                metrics=metrics,
                datasets=datasets,
                repo_id=repo_id,
                subfolder=subfolder,
            )
            return push_folder_to_hub(
                folder,
                repo_id,
                private=private,
                token=token,
                revision=revision,
                commit_message=commit_message
                or f"Upload {adapter_name or self.active_adapter} adapter",
                create_pr=create_pr,
                subfolder=subfolder,
                write_card=False,
            )
