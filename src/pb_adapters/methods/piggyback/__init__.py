"""Piggyback (Mallya, Davis, Lazebnik, ECCV 2018): a learned binary mask over frozen weights."""

from ...methods import MethodSpec, register_method
from .config import PiggybackConfig
from .layer import PiggybackLayer

__all__ = ["PiggybackConfig", "PiggybackLayer"]

register_method(
    MethodSpec(name="piggyback", config_class=PiggybackConfig, layer_class=PiggybackLayer)
)
