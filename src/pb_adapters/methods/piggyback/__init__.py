"""Piggyback (Mallya, Davis, Lazebnik, ECCV 2018): a learned binary mask over frozen weights."""

from ...registry import MethodSpec, register_method
from .config import PiggybackConfig
from .layer import PiggybackLayer

__all__ = ["PiggybackConfig", "PiggybackLayer"]

_DESCRIPTION = "a learned mask over the frozen base weights"

#: Config fields the training command line exposes (``--mask-type`` ...), with their help.
_CLI_OPTIONS = {
    "mask_type": "mask values: binary {0,1} or ternary {-1,0,1}",
    "mask_init": "initial value of every mask score (training starts from the base model)",
    "threshold": "scores above it keep their weight",
    "mask_lr": "Adam learning rate of the mask scores",
    "head_lr": "learning rate of the task head",
    "norm_lr": "learning rate of the per-task norm layers (--train-norms)",
}

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
        cli_options=_CLI_OPTIONS,
    )
)
