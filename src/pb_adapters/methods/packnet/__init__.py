"""PackNet (Mallya & Lazebnik, CVPR 2018): tasks packed into one network by iterative pruning."""

from ...methods import MethodSpec, register_method
from .config import PackNetConfig
from .layer import PackNetLayer
from .packing import finalize_task, prune_task

__all__ = ["PackNetConfig", "PackNetLayer", "finalize_task", "prune_task"]

register_method(
    MethodSpec(
        name="packnet",
        config_class=PackNetConfig,
        layer_class=PackNetLayer,
        training_schedule="pb_adapters.training.packnet:run_packnet_training",
    )
)
