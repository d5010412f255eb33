"""The training command line under its first name: the names of :mod:`pb_adapters.training.cli`.

``examples/train.py``, benchmarks and scripts import from here; new code may import from
:mod:`pb_adapters.training.cli` directly.
"""

from pb_adapters.training.cli import *  # noqa: F403 (this module is a second name for it)
from pb_adapters.training.cli import __all__ as __all__
