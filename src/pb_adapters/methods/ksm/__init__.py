"""KSM (Yang, He, Zhang, Fan, CVPR 2021): kernel-wise soft masks over frozen weights."""

from ...registry import MethodSpec, register_method
from .config import KSMConfig
from .layer import KSMLayer

__all__ = ["KSMConfig", "KSMLayer"]

_DESCRIPTION = (
    "a learned kernel-wise soft mask over the frozen base weights (per kernel, a binary bit "
    "plus an 8-bit real-valued scale)"
)

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
    )
)
