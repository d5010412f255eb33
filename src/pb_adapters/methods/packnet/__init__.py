"""PackNet (Mallya & Lazebnik, CVPR 2018): tasks packed into one network by iterative pruning."""

from ...registry import MethodSpec, register_method
from .config import PackNetConfig
from .layer import PackNetLayer
from .packing import finalize_task, prune_task

__all__ = ["PackNetConfig", "PackNetLayer", "finalize_task", "prune_task"]

_DESCRIPTION = (
    "its own share of the base weights, trained and then pruned by magnitude, packed with "
    "earlier tasks' weights in one network"
)

_CITATION = (
    "@inproceedings{mallya2018packnet,\n"
    "  title     = {PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning},\n"
    "  author    = {Mallya, Arun and Lazebnik, Svetlana},\n"
    "  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
    "  year      = {2018}\n"
    "}"
)

register_method(
    MethodSpec(
        name="packnet",
        config_class=PackNetConfig,
        layer_class=PackNetLayer,
        description=_DESCRIPTION,
        citation=_CITATION,
        layer_group="weights",
        lr_fields={
            "weights": "weight_lr",
            "head": "head_lr",
            "norms": "norm_lr",
            "modules": "head_lr",
        },
        training_schedule="pb_adapters.training.packnet:run_packnet_training",
    )
)
