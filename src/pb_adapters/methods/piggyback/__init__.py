"""Piggyback (Mallya, Davis, Lazebnik, ECCV 2018): a learned binary mask over frozen weights."""

from ...registry import MethodSpec, register_method
from .config import PiggybackConfig
from .layer import PiggybackLayer

__all__ = ["PiggybackConfig", "PiggybackLayer"]

_DESCRIPTION = "a learned mask over the frozen base weights"

_CITATION = (
    "@inproceedings{mallya2018piggyback,\n"
    "  title     = {Piggyback: Adapting a Single Network to Multiple Tasks by Learning to Mask"
    " Weights},\n"
    "  author    = {Mallya, Arun and Davis, Dillon and Lazebnik, Svetlana},\n"
    "  booktitle = {European Conference on Computer Vision (ECCV)},\n"
    "  year      = {2018}\n"
    "}"
)

register_method(
    MethodSpec(
        name="piggyback",
        config_class=PiggybackConfig,
        layer_class=PiggybackLayer,
        description=_DESCRIPTION,
        citation=_CITATION,
    )
)
