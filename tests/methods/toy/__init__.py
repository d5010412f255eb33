"""A toy adapter method, defined outside the library: one folder and one registry call.

It learns one on/off bit per output channel of every targeted layer. The conformance test
(``tests/methods/test_conformance.py``) runs it through the same contract as the built-in methods.
"""

from pb_adapters import register_method
from pb_adapters.methods import MethodSpec

from .config import ChannelMaskConfig
from .layer import ChannelMaskLayer

__all__ = ["CITATION", "ChannelMaskConfig", "ChannelMaskLayer"]

CITATION = (
    "@misc{pb_adapters_toy,\n"
    "  title  = {A Per-Channel Mask: the pb-adapters Toy Method},\n"
    "  author = {{pb-adapters contributors}},\n"
    "  year   = {2025}\n"
    "}"
)

register_method(
    MethodSpec(
        name="toy",
        config_class=ChannelMaskConfig,
        layer_class=ChannelMaskLayer,
        description="a learned on/off bit per output channel of the frozen base weights",
        citation=CITATION,
        cli_options={"score_init": "toy: initial score of every output channel"},
    )
)
