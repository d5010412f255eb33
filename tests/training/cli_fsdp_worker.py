"""One rank of ``examples/train.py``'s training sharded with FSDP2 across CPU processes.

Accelerate's launcher shards only on GPUs, so the command line's accelerator is swapped for
:func:`~pb_adapters.training.sharding.cpu_fsdp_accelerator` (one FSDP unit per residual block of
``test_resnet``); everything else is the command line's own code. Usage::

    accelerate launch --multi_gpu --num_processes 2 cli_fsdp_worker.py [examples/train.py options]
"""

from __future__ import annotations

import sys

from accelerate.utils import FullyShardedDataParallelPlugin

from pb_adapters.training.cli import main, run
from pb_adapters.training.sharding import cpu_fsdp_accelerator


def _sharded_accelerator(args: object) -> object:
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["BasicBlock", "Bottleneck"],
    )
    return cpu_fsdp_accelerator(plugin)


if __name__ == "__main__":
    run.make_accelerator = _sharded_accelerator
    sys.exit(main(sys.argv[1:]))
