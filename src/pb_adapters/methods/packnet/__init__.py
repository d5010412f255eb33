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

#: Config fields the training command line exposes (``--prune-ratio`` ...), with their help.
_CLI_OPTIONS = {
    "prune_ratio": "fraction of each task's weights pruned per layer (the demo tasks: 0.25)",
    "epochs": "training epochs of each task before pruning",
    "finetune_epochs": "retraining epochs after pruning (default with --epochs: half of it)",
    "weight_lr": "SGD learning rate of the free weights",
    "head_lr": "SGD learning rate of the task head",
    "norm_lr": "learning rate of the per-task norm layers (--train-norms)",
    "finetune_lr": "learning rate of weights and head while retraining after pruning",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "lr_decay_every": "epochs before the x0.1 learning-rate decay while training",
}

#: Options of PackNet's schedule (``pb_adapters.training.packnet``): argparse keywords.
_SCHEDULE_OPTIONS = {
    "--tasks": {
        "nargs": "+",
        "metavar": "DATASET",
        "help": "datasets packed one after another into one network (e.g. demo demo-inverted "
        "demo-rotated); default: --dataset",
    },
    "--resume-packed": {
        "metavar": "FOLDER",
        "help": "add the tasks to this saved packed network instead of starting from the base",
    },
    "--keep-last-unpruned": {
        "action": "store_true",
        "help": "do not prune the last task (as the official code; leaves no room for more tasks)",
    },
}

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
        cli_options=_CLI_OPTIONS,
        training_schedule="pb_adapters.training.packnet:run_packnet_training",
        schedule_options=_SCHEDULE_OPTIONS,
    )
)
