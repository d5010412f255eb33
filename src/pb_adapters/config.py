"""The configuration base class every method's config derives from.

A config says *which* modules get masks, *what* the task's head looks like, and the method's own
hyperparameters. It round-trips through JSON exactly (``to_dict`` / ``from_dict``) because it is
stored inside every artifact, and it validates its values strictly because artifacts come from
strangers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError
from .registry import get_method

__all__ = ["MAX_MODULE_NAMES", "MAX_NUM_LABELS", "AdapterConfig"]

#: The most classes a task may have (ImageNet-21k has 21,841): a config is small, the head it
#: declares is not, so the declared size is bounded before anything is allocated for it.
MAX_NUM_LABELS = 1 << 20
#: The most entries a ``target_modules``, ``exclude_modules`` or ``modules_to_save`` list may
#: have (the largest vision models have a few thousand modules).
MAX_MODULE_NAMES = 4096


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@dataclass
class AdapterConfig:
    """Fields shared by every adapter method.

    Args:
        target_modules: Which modules get masks. ``None`` (the default) masks every convolution
            and every hidden ``Linear`` of the backbone, the stem and downsample convolutions
            included, and never the classifier head. A list matches module names exactly or as a
            dotted suffix (``["qkv", "fc1"]``); a string is a regular expression that must match
            the whole module name.
        exclude_modules: Modules to leave unmasked, matched like ``target_modules``.
        num_labels: Number of classes of the task. When given, the task gets a fresh classifier
            head of that size; when ``None`` the task keeps (a trainable copy of) the base head.
        id2label: Class names, ``{0: "cat", 1: "dog"}``. Implies ``num_labels`` when that is unset.
        label2id: Inverse of ``id2label``; derived when omitted.
        train_head: Whether the task's head is trained.
        train_norms: Train a per-task copy of every normalisation layer (affine parameters and
            running statistics). Off by default, as in the official piggyback code, which keeps
            BatchNorm frozen and in eval mode.
        modules_to_save: Extra modules (names matched like ``target_modules``) of which the task
            keeps and trains its own full copy.
        base_model_name_or_path: Where the base model comes from (a timm name, ``hf-hub:`` id or
            a transformers id). Filled in from the model when left unset. Artifacts record it
            only when the base's weights are shown to be that checkpoint's, and the base's
            architecture otherwise (see :mod:`pb_adapters.provenance`).
        base_model_revision: The base model's revision on the Hub, when known (recorded under
            the same condition).
    """

    method: ClassVar[str] = ""

    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    train_head: bool = True
    train_norms: bool = False
    modules_to_save: list[str] | None = None
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None

    def __post_init__(self) -> None:
        self._normalise_labels()
        self.validate()

    # ------------------------------------------------------------------ validation
    def _normalise_labels(self) -> None:
        if self.id2label is not None:
            if not isinstance(self.id2label, dict):
                raise ConfigError(
                    f"id2label must be a dict of int -> str, got {type(self.id2label).__name__}"
                )
            normalised: dict[int, str] = {}
            for key, value in self.id2label.items():
                try:
                    index = int(key)
                except (TypeError, ValueError):
                    raise ConfigError(f"id2label keys must be integers, got {key!r}") from None
                if not isinstance(value, str):
                    raise ConfigError(f"id2label values must be strings, got {value!r} for {key!r}")
                normalised[index] = value
            self.id2label = dict(sorted(normalised.items()))
            if self.num_labels is None:
                self.num_labels = len(self.id2label)
            if self.label2id is None:
                self.label2id = {name: index for index, name in self.id2label.items()}

    def validate(self) -> None:
        """Check every field's type and range; raise :class:`ConfigError` naming the field."""
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str) and not _is_str_list(value):
                raise ConfigError(
                    f"{name} must be None, a regex string or a list of names, got {value!r}"
                )
        if self.modules_to_save is not None and not _is_str_list(self.modules_to_save):
            raise ConfigError(
                f"modules_to_save must be a list of names, got {self.modules_to_save!r}"
            )
        for name in ("target_modules", "exclude_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) > MAX_MODULE_NAMES:
                raise ConfigError(
                    f"{name} lists {len(value)} names; at most {MAX_MODULE_NAMES} are accepted"
                )
        if self.num_labels is not None and (
            isinstance(self.num_labels, bool)
            or not isinstance(self.num_labels, int)
            or not 1 <= self.num_labels <= MAX_NUM_LABELS
        ):
            raise ConfigError(
                f"num_labels must be an integer from 1 to {MAX_NUM_LABELS}, got {self.num_labels!r}"
            )
        if self.id2label is not None:
            if sorted(self.id2label) != list(range(len(self.id2label))):
                raise ConfigError("id2label keys must be 0 .. num_labels-1 without gaps")
            if self.num_labels != len(self.id2label):
                raise ConfigError(
                    f"num_labels={self.num_labels} but id2label has {len(self.id2label)} entries"
                )
        if self.label2id is not None and (
            not isinstance(self.label2id, dict)
            or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in self.label2id.items()
            )
        ):
            raise ConfigError("label2id must be a dict of str -> int")
        if self.label2id is not None and self.num_labels is not None:
            outside = [v for v in self.label2id.values() if not 0 <= v < self.num_labels]
            if outside:
                raise ConfigError(
                    f"label2id maps to class {outside[0]}, outside 0 .. {self.num_labels - 1}"
                )
        for name in ("train_head", "train_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("base_model_name_or_path", "base_model_revision"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {value!r}")

    @staticmethod
    def _check_float(
        name: str, value: Any, *, low: float | None = None, high: float | None = None
    ) -> None:
        """Shared range check for the float hyperparameters of method configs."""
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if low is not None and value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{name} must be <= {high}, got {value!r}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, ``method`` first; ``id2label`` keys become strings as in transformers."""
        data: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            data[f.name] = getattr(self, f.name)
        if data["id2label"] is not None:
            data["id2label"] = {str(k): v for k, v in data["id2label"].items()}
        return json.loads(json.dumps(data))  # deep copy, and proof that it is JSON-serialisable

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Build a config from :meth:`to_dict` output.

        Called on :class:`AdapterConfig` itself, it dispatches on ``data["method"]`` to the
        registered method's config class. Unknown keys are refused so that a typo or an artifact
        from a newer release does not silently change behaviour.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"an adapter config must be a JSON object, got {type(data).__name__}")
        method = data.get("method")
        target_cls: type[AdapterConfig] = cls
        if cls is AdapterConfig or cls.method != method:
            if not isinstance(method, str):
                raise ConfigError(f"the config's 'method' must be a string, got {method!r}")
            target_cls = get_method(method).config_class
            if not issubclass(target_cls, cls):
                raise ConfigError(f"a {method!r} config cannot be read as {cls.__name__}")
        known = {f.name for f in dataclasses.fields(target_cls)}
        kwargs = {k: v for k, v in data.items() if k != "method"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                f"unknown field(s) {unknown} for a {target_cls.method!r} config; "
                "the artifact may come from a newer pb-adapters release"
            )
        try:
            return target_cls(**kwargs)
        except TypeError as err:  # wrong argument shapes from a hand-written dict
            raise ConfigError(str(err)) from None

    def to_json_string(self) -> str:
        """The config as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON to ``path``."""
        Path(path).write_text(self.to_json_string() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> AdapterConfig:
        """Read a config written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read adapter config {path}: {err}") from None
        return cls.from_dict(data)
