"""Which base model the wrapper holds: its recorded identity and the fingerprint of its weights.

Artifacts record both; loading compares the fingerprint so that an adapter is never applied to
weights other than those it was trained on. What the identity may claim (a checkpoint's name, or
only an architecture's) is decided by :mod:`pb_adapters.provenance`.
"""

from __future__ import annotations

from typing import Any

from ..config import AdapterConfig
from ..errors import BaseModelMismatchError
from ..provenance import decide_provenance, pretrained_source, tensors_key
from ..serialization import fingerprint_tensors
from ..targeting import iter_base_tensors, model_family

__all__ = ["IdentityMixin", "describe_recorded_base"]


class IdentityMixin:
    """Base identity of :class:`~pb_adapters.PiggybackModel`, mixed into it (uses its base model)."""

    def _base_identity(self) -> dict[str, Any]:
        """The base's library, architecture and size (what needs no judgement)."""
        model = self.base_model
        family = model_family(model)
        architecture = type(model).__name__
        if family == "timm":
            architecture = model.pretrained_cfg.get("architecture") or architecture
        with self._base_installed():
            num_parameters = sum(t.numel() for n, t in iter_base_tensors(model) if n)
        return {"library": family, "architecture": architecture, "num_parameters": num_parameters}

    def _fill_base_identity(self, config: AdapterConfig) -> None:
        """Fill in what a new adapter's ``config`` leaves unset about its base, as its artifacts
        will record it. What the user set stays as given: artifacts record it only where the
        weights bear it out."""
        if config.base_model_name_or_path is None or config.base_model_revision is None:
            identity = self._artifact_identity(config)
            if config.base_model_name_or_path is None:
                config.base_model_name_or_path = identity["name_or_path"]
            if config.base_model_revision is None:
                config.base_model_revision = identity["revision"]

    def _artifact_identity(self, config: AdapterConfig) -> dict[str, Any]:
        """The ``base_model`` record of an artifact: what the base's weights are (a checkpoint's
        name only when they are provably its weights) and their fingerprint.

        ``config``'s ``base_model_name_or_path`` / ``base_model_revision`` say what the user
        believes the base is; they are recorded only where the weights bear them out.
        """
        described = self._base_identity()
        fingerprint = self.base_fingerprint()
        with self._base_installed():
            provenance = decide_provenance(
                self.base_model,
                head_paths=self._head_paths,
                fingerprint=fingerprint,
                architecture=described["architecture"],
                name=config.base_model_name_or_path,
                revision=config.base_model_revision,
            )
        identity: dict[str, Any] = {
            "name_or_path": provenance.name_or_path,
            "revision": provenance.revision,
            "weights": provenance.weights,
        }
        if provenance.checkpoint is not None:
            identity["checkpoint"] = provenance.checkpoint
        return identity | described | {"fingerprint": fingerprint}

    def base_fingerprint(self) -> str:
        """SHA-256 of every base weight and buffer (the head excluded) that adapters rely on."""
        with self._base_installed():
            items = list(iter_base_tensors(self.base_model, skip=self._head_paths))
        key = tensors_key(items)
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != key:
            source = pretrained_source(self.base_model)
            if (
                source is not None
                and source.key == key
                and source.skip == tuple(sorted(self._head_paths))
            ):
                # The very tensors the loader fingerprinted when it created the base, unchanged.
                self._fingerprint_cache = (key, source.fingerprint)
            else:
                self._fingerprint_cache = (key, fingerprint_tensors(items))
        return self._fingerprint_cache[1]

    def _verify_fingerprint(self, data: dict[str, Any]) -> None:
        """Refuse an artifact (its config ``data``) made for other base weights."""
        expected = data["base_model"]["fingerprint"]
        actual = self.base_fingerprint()
        if expected != actual:
            what, advice = describe_recorded_base(data["base_model"])
            raise BaseModelMismatchError(
                f"the base model's weights differ from those the adapter was trained on "
                f"(expected {expected[:19]}..., got {actual[:19]}...). The adapter was made for "
                f"{what}: {advice}, or pass verify_base=False if you know the difference is "
                "harmless."
            )


def describe_recorded_base(base: dict[str, Any]) -> tuple[str, str]:
    """The base an artifact's ``base_model`` record names, in words, and how to get it back.

    Records written before the weights were recorded (no ``weights`` field) read as they always
    did: the recorded name and revision.
    """
    name = base.get("name_or_path") or base.get("architecture") or "an unknown model"
    weights = base.get("weights")
    checkpoint = base.get("checkpoint")
    if weights == "random":
        return (
            f"a randomly initialised {name} (no pretrained weights)",
            "pass the very model it was trained on (a new random initialisation never matches)",
        )
    if weights == "modified":
        return (
            f"{name} with weights changed locally from {checkpoint or 'a checkpoint'}",
            "pass the very model it was trained on",
        )
    if weights == "unknown":
        named = f"; the base was said to be {checkpoint}" if checkpoint else ""
        return (
            f"{name} with weights of unverified origin{named}",
            "pass the very model it was trained on",
        )
    revision = f" at revision {base['revision']}" if base.get("revision") else ""
    return (
        f"{name}{revision}",
        "create the base from exactly that checkpoint, in its original dtype",
    )
