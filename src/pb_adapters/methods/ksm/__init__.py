"""KSM (Yang, He, Zhang, Fan, CVPR 2021): kernel-wise soft masks over frozen weights."""

from ...methods import MethodSpec, register_method
from .config import KSMConfig
from .layer import KSMLayer

__all__ = ["KSMConfig", "KSMLayer"]

register_method(MethodSpec(name="ksm", config_class=KSMConfig, layer_class=KSMLayer))
