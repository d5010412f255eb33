"""pb_adapters: piggyback masks for timm and transformers vision models.

One frozen, shared base model; per task a learned binary mask over its weights and a small head.
"""

from ._version import __version__
from .config import AdapterConfig
from .errors import (
    AdapterNotFoundError,
    ArtifactError,
    BaseModelMismatchError,
    ConfigError,
    FormatVersionError,
    HubConnectionError,
    HubError,
    PbAdaptersError,
    StorageError,
    TargetExistsError,
    TargetingError,
)
from .methods import available_methods, get_method, register_method
from .methods.ksm import KSMConfig
from .methods.packnet import PackNetConfig
from .methods.piggyback import PiggybackConfig
from .model import MaskStats, PiggybackModel, get_piggyback_model

__all__ = [
    "AdapterConfig",
    "AdapterNotFoundError",
    "ArtifactError",
    "BaseModelMismatchError",
    "ConfigError",
    "FormatVersionError",
    "HubConnectionError",
    "HubError",
    "KSMConfig",
    "MaskStats",
    "PackNetConfig",
    "PbAdaptersError",
    "PiggybackConfig",
    "PiggybackModel",
    "StorageError",
    "TargetExistsError",
    "TargetingError",
    "__version__",
    "available_methods",
    "get_method",
    "get_piggyback_model",
    "register_method",
]
