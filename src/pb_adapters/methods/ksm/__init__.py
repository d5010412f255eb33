"""KSM (Yang, He, Zhang, Fan, CVPR 2021): kernel-wise soft masks over frozen weights."""

from ...registry import MethodSpec, register_method
from .config import KSMConfig
from .layer import KSMLayer

__all__ = ["KSMConfig", "KSMLayer"]

_DESCRIPTION = (
    "a learned kernel-wise soft mask over the frozen base weights (per kernel, a binary bit "
    "plus an 8-bit real-valued scale)"
)

#: Config fields the training command line exposes (``--temperature`` ...), with their help.
_CLI_OPTIONS = {
    "mask_init": "initial value of every mask score (training starts from the base model)",
    "temperature": "temperature of the relaxed binary part",
    "real_scale": "factor of the real-valued part of the soft mask (0: binary masks only)",
    "block_size": "input connections sharing one mask entry where a kernel is a single weight "
    "(Linear, 1x1 convolutions)",
    "mask_lr": "Adam learning rate of the mask scores",
    "head_lr": "learning rate of the task head",
    "norm_lr": "learning rate of the per-task norm layers (--train-norms)",
}

_CITATION = (
    "@inproceedings{yang2021ksm,\n"
    "  title     = {KSM: Fast Multiple Task Adaption via Kernel-wise Soft Mask Learning},\n"
    "  author    = {Yang, Li and He, Zhezhi and Zhang, Junshan and Fan, Deliang},\n"
    "  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
    "  year      = {2021}\n"
    "}"
)

register_method(
    MethodSpec(
        name="ksm",
        config_class=KSMConfig,
        layer_class=KSMLayer,
        description=_DESCRIPTION,
        citation=_CITATION,
        cli_options=_CLI_OPTIONS,
    )
)
