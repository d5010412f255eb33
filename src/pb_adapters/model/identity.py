"""Which base model the wrapper holds: its recorded identity and the fingerprint of its weights.

Artifacts record both; loading compares the fingerprint so that an adapter is never applied to
weights other than those it was trained on.
"""

from __future__ import annotations

from typing import Any

from ..config import AdapterConfig
from ..errors import BaseModelMismatchError
from ..serialization import fingerprint_tensors
from ..targeting import iter_base_tensors, model_family

__all__ = ["IdentityMixin"]


class IdentityMixin:
    """Base identity of :class:`~pb_adapters.PiggybackModel`, mixed into it (uses its base model)."""

    def _base_identity(self) -> dict[str, Any]:
        model = self.base_model
        family = model_family(model)
        name: str | None = None
        revision: str | None = None
        architecture: str | None = None
        if family == "timm":
            cfg = model.pretrained_cfg
            architecture = cfg.get("architecture")
            hub_id, _, hub_revision = (cfg.get("hf_hub_id") or "").partition("@")
            name = f"hf-hub:{hub_id}" if hub_id else architecture
            revision = hub_revision or None
        elif family == "transformers":
            name = getattr(model, "name_or_path", None) or model.config._name_or_path or None
            revision = getattr(model.config, "_commit_hash", None)
            architecture = type(model).__name__
        else:
            architecture = type(model).__name__
        with self._base_installed():
            num_parameters = sum(t.numel() for n, t in iter_base_tensors(model) if n)
        return {
            "name_or_path": name,
            "revision": revision,
            "library": family,
            "architecture": architecture,
            "num_parameters": num_parameters,
        }

    def _fill_base_identity(self, config: AdapterConfig) -> None:
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = self._base_identity()["name_or_path"]
        if config.base_model_revision is None:
            config.base_model_revision = self._base_identity()["revision"]

    def _artifact_identity(self, config: AdapterConfig) -> dict[str, Any]:
        """The ``base_model`` record of an artifact: the base as ``config`` names it, and its
        fingerprint."""
        identity = self._base_identity()
        identity["name_or_path"] = config.base_model_name_or_path or identity["name_or_path"]
        identity["revision"] = config.base_model_revision or identity["revision"]
        identity["fingerprint"] = self.base_fingerprint()
        return identity

    def base_fingerprint(self) -> str:
        """SHA-256 of every base weight and buffer (the head excluded) that adapters rely on."""
        with self._base_installed():
            items = list(iter_base_tensors(self.base_model, skip=self._head_paths))
        key = tuple((n, t.data_ptr(), t._version, t.dtype) for n, t in items)
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != key:
            self._fingerprint_cache = (key, fingerprint_tensors(items))
        return self._fingerprint_cache[1]

    def _verify_fingerprint(self, data: dict[str, Any]) -> None:
        """Refuse an artifact (its config ``data``) made for other base weights."""
        expected = data["base_model"]["fingerprint"]
        actual = self.base_fingerprint()
        if expected != actual:
            base = data["base_model"]
            where = base.get("name_or_path") or base.get("architecture") or "unknown"
            revision = f" at revision {base['revision']}" if base.get("revision") else ""
            raise BaseModelMismatchError(
                f"the base model's weights differ from those the adapter was trained on "
                f"(expected {expected[:19]}..., got {actual[:19]}...). The adapter was made for "
                f"{where}{revision}: create the base from exactly that checkpoint, in its original "
                "dtype, or pass verify_base=False if you know the difference is harmless."
            )
